//! Expansion: the function becomes a `Task` constant whose initializer holds the original
//! function, the worker-side chunk runner and the link-time registration.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::validate::{TaskFn, Wire};

/// Attributes that describe the item as a whole and belong on the constant users see.
fn belongs_on_const(attr: &syn::Attribute) -> bool {
    ["doc", "cfg", "cfg_attr", "deprecated"]
        .iter()
        .any(|name| attr.path().is_ident(name))
}

pub(crate) fn expand(task: &TaskFn) -> TokenStream {
    let TaskFn {
        krate,
        func,
        args,
        ret,
        arg_wire,
        ret_wire,
        borrowed,
    } = task;
    let private = quote!(#krate::__private);
    let name = &func.sig.ident;
    let vis = &func.vis;
    let (const_attrs, fn_attrs): (Vec<_>, Vec<_>) =
        func.attrs.iter().partition(|a| belongs_on_const(a));
    let mut inner = func.clone();
    inner.attrs = fn_attrs.into_iter().cloned().collect();
    inner.vis = syn::Visibility::Inherited;

    let types: Vec<&syn::Type> = args.iter().collect();
    // The value a pool sends: the argument itself, a tuple of all of them, or ().
    let (arg_ty, destructure) = match args.as_slice() {
        [ty] => (quote!(#ty), quote!(let __multiproc_a0 = __multiproc_arg;)),
        _ => {
            let bound: Vec<_> = (0..args.len())
                .map(|i| format_ident!("__multiproc_a{}", i))
                .collect();
            (
                quote!((#(#types,)*)),
                quote!(let (#(#bound,)*) = __multiproc_arg;),
            )
        }
    };
    let call_args: Vec<_> = (0..args.len())
        .map(|i| format_ident!("__multiproc_a{}", i))
        .collect();
    // A borrowed argument is lent from the owned value the caller sent.
    let call = match borrowed {
        Some(_) => quote!(#name(&__multiproc_a0)),
        None => quote!(#name(#(#call_args),*)),
    };
    // How each side travels: plain numbers (and `Vec`s of them) as raw bytes, anything
    // else as postcard.
    let layout = |wire: Wire| match wire {
        Wire::Raw => quote!(#private::RawLayout),
        Wire::RawVec => quote!(#private::RawVecLayout),
        Wire::RawTuple => quote!(#private::RawTupleLayout),
        Wire::Postcard => quote!(#private::PostcardLayout),
    };
    let (arg_layout, ret_layout) = (layout(*arg_wire), layout(*ret_wire));
    // The function's own signature: a borrowed argument stays borrowed.
    let fn_ptr = match borrowed {
        Some((declared, _)) => quote!(fn(#declared) -> #ret),
        None => quote!(fn(#(#types),*) -> #ret),
    };
    // A borrowed argument is read in place in the chunk; an owned one is decoded.
    let runner = match borrowed {
        Some((_, referent)) => quote! {
            #private::run_chunk_borrowed::<#referent, #ret, #ret_layout>(
                #name,
                __multiproc_input,
                __multiproc_count,
                __multiproc_out,
                __multiproc_failures,
            )
        },
        None => quote! {
            #private::run_chunk::<#arg_ty, #ret, #arg_layout, #ret_layout>(
                __multiproc_invoke,
                __multiproc_input,
                __multiproc_count,
                __multiproc_out,
                __multiproc_failures,
            )
        },
    };

    // Each check carries the span of the type it checks, so an argument or result type
    // that cannot be serialized is reported on that type.
    let arg_checks = types
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> #private::assert_argument::<#ty>();));
    let ret_check = quote_spanned!(ret.span()=> #private::assert_result::<#ret>(););

    quote! {
        #(#const_attrs)*
        #[allow(non_upper_case_globals)]
        #vis const #name: #private::Task<#arg_ty, #ret, #fn_ptr> = {
            #inner

            const __MULTIPROC_NAME: &::core::primitive::str = ::core::concat!(
                ::core::module_path!(), "::", ::core::stringify!(#name)
            );

            const _: () = {
                #(#arg_checks)*
                #ret_check
            };

            fn __multiproc_invoke(__multiproc_arg: #arg_ty) -> #ret {
                #destructure
                #call
            }

            fn __multiproc_run(
                __multiproc_input: &[::core::primitive::u8],
                __multiproc_count: ::core::primitive::u32,
                __multiproc_out: &mut #private::Vec<::core::primitive::u8>,
                __multiproc_failures: &mut #private::Vec<#private::Failure>,
            ) -> ::core::primitive::u32 {
                #runner
            }

            #[#private::linkme::distributed_slice(#private::TASKS)]
            #[linkme(crate = #private::linkme)]
            static __MULTIPROC_ENTRY: #private::TaskEntry = #private::TaskEntry {
                name: __MULTIPROC_NAME,
                run: __multiproc_run,
            };

            #private::Task::__new(
                __MULTIPROC_NAME,
                #name as #fn_ptr,
                __multiproc_invoke,
                <#arg_layout as #private::Layout<#arg_ty>>::CODEC,
                <#ret_layout as #private::Layout<#ret>>::CODEC,
            )
        };
    }
}

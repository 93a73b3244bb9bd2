//! Validation: everything a worker process cannot call is rejected here, each with one
//! error spanned on the offending token and saying what is expected instead.

use proc_macro2::TokenStream;
use quote::ToTokens;

use super::parse::Parsed;

/// A function that a worker can run.
pub(crate) struct TaskFn {
    pub krate: syn::Path,
    pub func: syn::ItemFn,
    /// The arguments' types, in order.
    pub args: Vec<syn::Type>,
    /// The declared result type, `()` when there is none.
    pub ret: syn::Type,
}

/// Returns the task, or the original item (to re-emit) and every error found.
pub(crate) fn validate(parsed: Parsed) -> Result<TaskFn, (TokenStream, syn::Error)> {
    let Parsed { krate, func } = parsed;
    let mut errors: Vec<syn::Error> = Vec::new();
    let mut fail = |span: &dyn ToTokens, msg: &str| errors.push(syn::Error::new_spanned(span, msg));
    let sig = &func.sig;

    if let Some(t) = &sig.asyncness {
        fail(
            t,
            "#[parallel] functions cannot be `async`: a worker runs them to completion on a \
             plain thread; make this a plain `fn` (block on a future inside it if you need one)",
        );
    }
    if let syn::Safety::Unsafe(t) = &sig.safety {
        fail(
            t,
            "#[parallel] functions cannot be `unsafe`: a pool calls them with no way to uphold \
             a safety contract; make the function safe and use `unsafe` blocks inside it",
        );
    }
    if let Some(abi) = &sig.abi {
        fail(
            abi,
            "#[parallel] functions cannot be `extern`: they are called through Rust's own ABI \
             by the worker; remove the ABI",
        );
    }
    if let Some(v) = &sig.variadic {
        fail(v, "#[parallel] functions cannot be variadic");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let span: &dyn ToTokens = if sig.generics.params.is_empty() {
            &sig.generics.where_clause
        } else {
            &sig.generics
        };
        fail(
            span,
            "#[parallel] functions cannot be generic: a worker must know the concrete argument \
             and result types; write one #[parallel] function per type",
        );
    }

    let mut args = Vec::new();
    for input in &sig.inputs {
        match input {
            syn::FnArg::Receiver(r) => fail(
                r,
                "#[parallel] functions cannot take `self`: a worker looks them up by name as \
                 free functions; pass the value as an ordinary argument",
            ),
            syn::FnArg::Typed(pt) => {
                let plain_name = matches!(
                    &*pt.pat,
                    syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none()
                );
                if !plain_name {
                    fail(
                        &pt.pat,
                        "arguments of a #[parallel] function must be plain names (`x: T`); \
                         destructure inside the body instead",
                    );
                }
                if check_type(&pt.ty, "argument", &mut fail) {
                    args.push((*pt.ty).clone());
                }
            }
        }
    }
    let ret = match &sig.output {
        syn::ReturnType::Default => syn::parse_quote!(()),
        syn::ReturnType::Type(_, ty) => {
            check_type(ty, "result", &mut fail);
            (**ty).clone()
        }
    };

    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(TaskFn {
            krate,
            func,
            args,
            ret,
        }),
        Some(mut first) => {
            for e in errors {
                first.combine(e);
            }
            Err((func.into_token_stream(), first))
        }
    }
}

/// Rejects borrowed and `impl Trait` types, which cannot cross a process boundary. Other
/// types are checked by the compiler (`Serialize + DeserializeOwned`) after expansion.
fn check_type(ty: &syn::Type, role: &str, fail: &mut impl FnMut(&dyn ToTokens, &str)) -> bool {
    match ty {
        syn::Type::Reference(r) => {
            fail(
                r,
                &format!(
                    "the {role} of a #[parallel] function must be owned, because it travels \
                     between processes: use `String` for `&str`, `Vec<T>` for `&[T]`, `T` for `&T`"
                ),
            );
            false
        }
        syn::Type::ImplTrait(t) => {
            fail(
                t,
                &format!(
                    "the {role} of a #[parallel] function must be a concrete type that \
                     implements `Serialize` and `DeserializeOwned`, not `impl Trait`"
                ),
            );
            false
        }
        syn::Type::Paren(p) => check_type(&p.elem, role, fail),
        syn::Type::Group(g) => check_type(&g.elem, role, fail),
        _ => true,
    }
}

//! Expansion: the body is expanded inline, not into a closure, so `?` and `return` act on
//! the enclosing function. Guards make the pool current for the block and close and join
//! it on every way out (normal end, `?`, `return`, panic).

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};

use super::parse::WithPool;

pub(crate) fn expand(w: &WithPool) -> TokenStream {
    let config = &w.config;
    let body = &w.body;
    let krate = quote!(::multiproc);
    // Mixed-site names: the body cannot see or shadow them.
    let pool = quote_spanned!(Span::mixed_site()=> __multiproc_pool);
    let current = quote_spanned!(Span::mixed_site()=> __multiproc_current);
    let binding = w.binding.as_ref().map(|(ident, ty)| {
        let ty = match ty {
            Some(ty) => quote!(#ty),
            None => quote!(&#krate::Pool),
        };
        quote! {
            #[allow(unused_variables)]
            let #ident: #ty = &#pool;
        }
    });
    // `with_pool!(3, { .. })`: splice the block's statements, so that the braces the user
    // wrote are not reported as unnecessary braces around our block's value.
    let body = match body {
        syn::Expr::Block(b) if b.label.is_none() && b.attrs.is_empty() => {
            let stmts = &b.block.stmts;
            quote!(#(#stmts)*)
        }
        other => quote!(#other),
    };
    quote! {
        {
            // Declared first, dropped last: closes and joins the pool.
            let #pool: #krate::Pool = #krate::__private::with_pool_start(#config);
            // Dropped before it: `par_map` goes back to the enclosing pool.
            let #current = #pool.__enter();
            #binding
            #body
        }
    }
}

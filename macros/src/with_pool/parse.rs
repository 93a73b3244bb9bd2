//! Parsing `with_pool!(CONFIG, |pool| BODY)`, `with_pool!(CONFIG, |pool: &Pool| BODY)`
//! and `with_pool!(CONFIG, BODY)`.

use syn::parse::{Parse, ParseStream};
use syn::{Token, Type};

pub(crate) struct WithPool {
    /// A worker count or a `PoolBuilder` (anything implementing `IntoPool`).
    pub config: syn::Expr,
    /// The name the body uses for the pool, if any, and its written type.
    pub binding: Option<(syn::Ident, Option<Type>)>,
    pub body: syn::Expr,
}

impl Parse for WithPool {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(input.error(
                "expected `with_pool!(workers_or_builder, |pool| body)` or `with_pool!(workers_or_builder, body)`",
            ));
        }
        let config: syn::Expr = input.parse()?;
        input.parse::<Token![,]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected `,` and then the body: `with_pool!(3, |pool| body)`",
            )
        })?;
        let binding = if input.peek(Token![|]) {
            input.parse::<Token![|]>()?;
            let ident: syn::Ident = input.parse()?;
            let ty = if input.peek(Token![:]) {
                input.parse::<Token![:]>()?;
                Some(input.parse::<Type>()?)
            } else {
                None
            };
            input.parse::<Token![|]>()?;
            Some((ident, ty))
        } else {
            None
        };
        let body: syn::Expr = input.parse()?;
        if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
        }
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the body of with_pool!"));
        }
        Ok(WithPool {
            config,
            binding,
            body,
        })
    }
}

//! Parsing: the attribute's arguments (`crate = path`) and the function it is on.

use proc_macro2::TokenStream;
use syn::parse::Parser;

/// What `#[parallel(...)]` was given.
pub(crate) struct Parsed {
    /// The path of the `multiproc` crate (`crate = path`), `::multiproc` by default.
    pub krate: syn::Path,
    pub func: syn::ItemFn,
}

pub(crate) fn parse(args: TokenStream, item: TokenStream) -> syn::Result<Parsed> {
    let mut krate: Option<syn::Path> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            if krate.is_some() {
                return Err(meta.error("`crate` is given twice"));
            }
            krate = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error(
                "unknown argument of #[parallel]; the only one is `crate = path::to::multiproc`",
            ))
        }
    });
    let args_result = parser.parse2(args);
    let func = syn::parse2::<syn::ItemFn>(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[parallel] goes on a free function: `#[parallel] fn name(arg: T) -> R { .. }`",
        )
    });
    let (func, ()) = match (func, args_result) {
        (Ok(f), Ok(())) => (f, ()),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            return Err(a);
        }
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    Ok(Parsed {
        krate: krate.unwrap_or_else(|| syn::parse_quote!(::multiproc)),
        func,
    })
}

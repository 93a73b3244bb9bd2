//! `#[parallel]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

pub(crate) fn parallel(args: TokenStream, item: TokenStream) -> TokenStream {
    let parsed = match parse::parse(args, item.clone()) {
        Ok(parsed) => parsed,
        // Keep the user's item so the rest of their crate still type-checks and IDEs
        // keep working; the error is reported beside it.
        Err(e) => return with_error(item, e),
    };
    match validate::validate(parsed) {
        Ok(task) => expand::expand(&task),
        Err((item, e)) => with_error(item, e),
    }
}

fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let mut out = item;
    out.extend(error.into_compile_error());
    out
}

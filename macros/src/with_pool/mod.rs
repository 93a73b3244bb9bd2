//! `with_pool!`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

pub(crate) fn with_pool(input: TokenStream) -> TokenStream {
    let parsed = match syn::parse2::<parse::WithPool>(input) {
        Ok(parsed) => parsed,
        Err(e) => return e.into_compile_error(),
    };
    if let Err(e) = validate::validate(&parsed) {
        return e.into_compile_error();
    }
    expand::expand(&parsed)
}

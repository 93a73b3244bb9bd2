//! Procedural macros of [multiproc](https://docs.rs/multiproc). Use them through the
//! `multiproc` crate (`multiproc::parallel`), which documents them; the generated code
//! refers to `::multiproc::__private` and does not work without it.

use proc_macro::TokenStream;

mod parallel;

/// Marks a function that worker processes can run. See `multiproc::parallel`.
#[proc_macro_attribute]
pub fn parallel(args: TokenStream, item: TokenStream) -> TokenStream {
    parallel::parallel(args.into(), item.into()).into()
}

//! Procedural macros of [multiproc](https://docs.rs/multiproc). Use them through the
//! `multiproc` crate (`multiproc::parallel`), which documents them; the generated code
//! refers to `::multiproc::__private` and does not work without it.

use proc_macro::TokenStream;

mod parallel;

/// Marks a function that worker processes can run.
///
/// ```ignore
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn t1(x: u64) -> u64 {
///     x * 10
/// }
///
/// #[parallel]
/// fn add(a: u64, b: u64) -> u64 {   // several arguments: the pool sends a tuple
///     a + b
/// }
///
/// fn main() -> multiproc::Result<()> {
///     assert_eq!(t1(5), 50);                                // still callable here
///     let tens = vec![1u64, 2, 3].par_map(t1)?;             // runs in worker processes
///     let sums = vec![(1u64, 2u64), (3, 4)].par_map(add)?;  // tuples feed `add`
///     assert_eq!((tens, sums), (vec![10, 20, 30], vec![3, 7]));
///     Ok(())
/// }
/// ```
///
/// The function keeps its body; its name becomes a constant of type
/// `multiproc::Task<A, R, fn(..) -> R>` that derefs to the function, so `t1(5)` and
/// `iter.map(*t1)` work, and only `#[parallel]` functions can be handed to a pool. The
/// function is registered at link time under `module::path::t1`, which is how a worker
/// finds it.
///
/// Arguments and the result must be owned and implement serde's `Serialize` and
/// `DeserializeOwned`; a type that does not is a compile error on that type. Rejected, each
/// with a message saying what to write instead: `async`, generic, `unsafe` and `extern`
/// functions, `self`, reference and `impl Trait` arguments or results, and arguments that
/// are patterns rather than plain names.
///
/// `#[parallel(crate = path::to::multiproc)]` names the `multiproc` crate when it was
/// renamed in `Cargo.toml`.
#[proc_macro_attribute]
pub fn parallel(args: TokenStream, item: TokenStream) -> TokenStream {
    parallel::parallel(args.into(), item.into()).into()
}

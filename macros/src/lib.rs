//! Procedural macros of [multiproc](https://docs.rs/multiproc). Use them through the
//! `multiproc` crate (`multiproc::parallel`, `multiproc::with_pool!`), which documents
//! them; the generated code refers to `::multiproc` and does not work without it.

use proc_macro::TokenStream;

mod parallel;
mod with_pool;

/// Marks a function that worker processes can run.
///
/// ```no_run
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

/// Runs a block with a pool of its own, like Python's `with Pool(3) as pool:`.
///
/// ```no_run
/// use multiproc::prelude::*;
///
/// #[parallel]
/// fn t1(x: u64) -> u64 {
///     x * 10
/// }
///
/// fn main() -> multiproc::Result<()> {
///     let data: Vec<u64> = (0..100).collect();
///     let v = with_pool!(3, |pool| {
///         let r = pool.apply_async(t1, 5);
///         let all = data.par_map(t1)?; // runs on this pool inside the block
///         assert_eq!(all.len(), 100);
///         r.get()?
///     });
///     assert_eq!(v, 50);
///     let v = with_pool!(Pool::builder().workers(2).chunk_size(1), |pool| pool.map(t1, &data))?;
///     assert_eq!(v[1], 10);
///     let v = with_pool!(3, { data.par_map(t1)? });
///     assert_eq!(v[2], 20);
///     Ok(())
/// }
/// ```
///
/// The first argument is a worker count or a `PoolBuilder`. The body is expanded inline,
/// not into a closure, so `?` and `return` act on the enclosing function. Inside the
/// block (and in every function it calls on this thread) `par_map` runs on this pool;
/// blocks nest. The pool is closed and joined when the block is left by any path: its end,
/// `?`, `return` or a panic. A literal `0` is a compile error; a pool that cannot start
/// panics with a message saying why.
#[proc_macro]
pub fn with_pool(input: TokenStream) -> TokenStream {
    with_pool::with_pool(input.into()).into()
}

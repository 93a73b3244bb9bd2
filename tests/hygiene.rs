//! The expansion of `#[parallel]` uses absolute paths only: it compiles with `core`,
//! `std` and common names shadowed, under `deny(unused_qualifications)`, and in a crate
//! that renames `multiproc`.
#![deny(unused_qualifications)]
#![allow(dead_code, non_camel_case_types)]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod core {}
mod serde {}
mod linkme {}

struct Vec;
struct Result;
struct Option;
type u8 = ();
type u32 = ();
type str = ();

mod renamed {
    pub use multiproc as mp;
}

use multiproc::ParMap as _;

#[multiproc::parallel]
fn hygienic(x: u64, y: u64) -> u64 {
    x + y
}

#[multiproc::parallel(crate = renamed::mp)]
fn through_a_renamed_crate(x: u64) -> u64 {
    x + 1
}

mod inner {
    /// Docs on the function end up on the task constant.
    #[multiproc::parallel]
    pub fn visible(x: u64) -> u64 {
        x * 2
    }
}

#[test]
fn shadowed_names_do_not_leak_into_the_expansion() {
    let pairs = [(1u64, 2u64), (3, 4)];
    assert_eq!(pairs.par_map(hygienic).unwrap(), [3, 7]);
    let items = [1u64, 2];
    assert_eq!(items.par_map(through_a_renamed_crate).unwrap(), [2, 3]);
    assert_eq!(items.par_map(inner::visible).unwrap(), [2, 4]);
    assert!(inner::visible.name().ends_with("hygiene::inner::visible"));
}

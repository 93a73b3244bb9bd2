//! Compile-fail tests: every misuse of `#[parallel]` is a spanned error that says what
//! to write instead. The expected messages are in `tests/ui/*.stderr`.

#[test]
fn compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

//! Validation: a literal worker count of 0 is rejected at compile time.

use super::parse::WithPool;

pub(crate) fn validate(w: &WithPool) -> syn::Result<()> {
    if let syn::Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Int(n),
        ..
    }) = &w.config
        && n.base10_parse::<u64>()? == 0
    {
        return Err(syn::Error::new_spanned(
            n,
            "with_pool! needs at least one worker: a pool of 0 workers could never run a task",
        ));
    }
    Ok(())
}

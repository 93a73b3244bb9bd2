//! Validation: everything a worker process cannot call is rejected here, each with one
//! error spanned on the offending token and saying what is expected instead.

use proc_macro2::TokenStream;
use quote::ToTokens;

use super::parse::Parsed;

/// A function that a worker can run.
pub(crate) struct TaskFn {
    pub krate: syn::Path,
    pub func: syn::ItemFn,
    /// The arguments' types, in order.
    pub args: Vec<syn::Type>,
    /// The declared result type, `()` when there is none.
    pub ret: syn::Type,
    /// How the argument travels (raw only when it is the only one).
    pub arg_wire: Wire,
    /// How the result travels.
    pub ret_wire: Wire,
    /// A lone `&str` or `&[u8]` argument: its declared type, and what it refers to (`str`
    /// or `[u8]`). `args` then holds the owned type the caller sends (`String`, `Vec<u8>`).
    pub borrowed: Option<(syn::Type, syn::Type)>,
}

/// How one side of a task travels between the processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// Postcard: any serde type.
    Postcard,
    /// A plain number, or an array of them: its raw bytes.
    Raw,
    /// A `Vec` of plain numbers: its length, then its elements' bytes in one copy.
    RawVec,
    /// A tuple of plain numbers (the arguments of a task that takes several): each
    /// field's bytes, in order.
    RawTuple,
}

/// The most fields a tuple of plain numbers may have to travel raw (the runtime's
/// layouts stop there).
const MAX_RAW_FIELDS: usize = 12;

impl Wire {
    fn of(ty: &syn::Type) -> Wire {
        match ty {
            syn::Type::Tuple(t) => Wire::of_fields(t.elems.iter()),
            syn::Type::Paren(p) => Wire::of(&p.elem),
            syn::Type::Group(g) => Wire::of(&g.elem),
            _ if is_plain_number(ty) => Wire::Raw,
            _ if vec_element(ty).is_some_and(is_plain_number) => Wire::RawVec,
            _ => Wire::Postcard,
        }
    }

    /// The arguments of a task: one travels as its type does, several as a tuple.
    fn of_args(args: &[syn::Type]) -> Wire {
        match args {
            [ty] => Wire::of(ty),
            _ => Wire::of_fields(args.iter()),
        }
    }

    /// A tuple of these fields.
    fn of_fields<'a>(fields: impl ExactSizeIterator<Item = &'a syn::Type>) -> Wire {
        if (1..=MAX_RAW_FIELDS).contains(&fields.len()) && { fields }.all(is_plain_number) {
            Wire::RawTuple
        } else {
            Wire::Postcard
        }
    }
}

/// Returns the task, or the original item (to re-emit) and every error found.
pub(crate) fn validate(parsed: Parsed) -> Result<TaskFn, (TokenStream, syn::Error)> {
    let Parsed { krate, func } = parsed;
    let mut errors: Vec<syn::Error> = Vec::new();
    let mut fail = |span: &dyn ToTokens, msg: &str| errors.push(syn::Error::new_spanned(span, msg));
    let sig = &func.sig;

    if let Some(t) = &sig.asyncness {
        fail(
            t,
            "#[parallel] functions cannot be `async`: a worker runs them to completion on a \
             plain thread; make this a plain `fn` (block on a future inside it if you need one)",
        );
    }
    if let syn::Safety::Unsafe(t) = &sig.safety {
        fail(
            t,
            "#[parallel] functions cannot be `unsafe`: a pool calls them with no way to uphold \
             a safety contract; make the function safe and use `unsafe` blocks inside it",
        );
    }
    if let Some(abi) = &sig.abi {
        fail(
            abi,
            "#[parallel] functions cannot be `extern`: they are called through Rust's own ABI \
             by the worker; remove the ABI",
        );
    }
    if let Some(v) = &sig.variadic {
        fail(v, "#[parallel] functions cannot be variadic");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let span: &dyn ToTokens = if sig.generics.params.is_empty() {
            &sig.generics.where_clause
        } else {
            &sig.generics
        };
        fail(
            span,
            "#[parallel] functions cannot be generic: a worker must know the concrete argument \
             and result types; write one #[parallel] function per type",
        );
    }

    let mut args = Vec::new();
    let mut borrowed = None;
    for input in &sig.inputs {
        match input {
            syn::FnArg::Receiver(r) => fail(
                r,
                "#[parallel] functions cannot take `self`: a worker looks them up by name as \
                 free functions; pass the value as an ordinary argument",
            ),
            syn::FnArg::Typed(pt) => {
                let plain_name = matches!(
                    &*pt.pat,
                    syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none()
                );
                if !plain_name {
                    fail(
                        &pt.pat,
                        "arguments of a #[parallel] function must be plain names (`x: T`); \
                         destructure inside the body instead",
                    );
                }
                if let Some((owned, referent)) = borrowable(&pt.ty) {
                    if sig.inputs.len() == 1 {
                        borrowed = Some(((*pt.ty).clone(), referent));
                        args.push(owned);
                    } else {
                        fail(
                            &pt.ty,
                            "a #[parallel] function can borrow its argument (`&str`, `&[u8]`) only \
                             when it takes one: take `String` or `Vec<u8>` here, or pass a \
                             tuple of owned values",
                        );
                    }
                } else if check_type(&pt.ty, "argument", &mut fail) {
                    args.push((*pt.ty).clone());
                }
            }
        }
    }
    let ret = match &sig.output {
        syn::ReturnType::Default => syn::parse_quote!(()),
        syn::ReturnType::Type(_, ty) => {
            check_type(ty, "result", &mut fail);
            if let Some(range) = find_range_handle(ty) {
                fail(
                    range,
                    "a #[parallel] function cannot return a `SharedChunkMut`: a range stays in \
                     the task it was sent to, so that no two processes write it; write the \
                     range here and return the data, or nothing",
                );
            }
            (**ty).clone()
        }
    };

    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(TaskFn {
            krate,
            func,
            arg_wire: Wire::of_args(&args),
            ret_wire: Wire::of(&ret),
            args,
            ret,
            borrowed,
        }),
        Some(mut first) => {
            for e in errors {
                first.combine(e);
            }
            Err((func.into_token_stream(), first))
        }
    }
}

/// The first path segment named `SharedChunkMut` anywhere in `ty` (a tuple, an
/// `Option`, a `Vec`, ...). By name: an alias hides it, and the runtime then refuses it
/// when the result is serialized in the worker.
fn find_range_handle(ty: &syn::Type) -> Option<&syn::PathSegment> {
    use syn::visit::Visit;
    struct Find<'a>(Option<&'a syn::PathSegment>);
    impl<'a> Visit<'a> for Find<'a> {
        fn visit_path_segment(&mut self, seg: &'a syn::PathSegment) {
            if self.0.is_none() && seg.ident == "SharedChunkMut" {
                self.0 = Some(seg);
            }
            syn::visit::visit_path_segment(self, seg);
        }
    }
    let mut find = Find(None);
    find.visit_type(ty);
    find.0
}

/// For `&str` and `&[u8]` (shared, no lifetime named): the owned type the caller sends
/// in its place, and the referent. A worker reads such an argument in place, in the
/// chunk it arrives in.
fn borrowable(ty: &syn::Type) -> Option<(syn::Type, syn::Type)> {
    let syn::Type::Reference(r) = ty else {
        return None;
    };
    if r.mutability.is_some() || r.lifetime.is_some() {
        return None;
    }
    match &*r.elem {
        syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => Some((
            syn::parse_quote!(::std::string::String),
            syn::parse_quote!(str),
        )),
        syn::Type::Slice(s) if matches!(&*s.elem, syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident("u8")) => {
            Some((
                syn::parse_quote!(::std::vec::Vec<u8>),
                syn::parse_quote!([u8]),
            ))
        }
        _ => None,
    }
}

/// Rejects borrowed and `impl Trait` types, which cannot cross a process boundary. Other
/// types are checked by the compiler (`Serialize + DeserializeOwned`) after expansion.
fn check_type(ty: &syn::Type, role: &str, fail: &mut impl FnMut(&dyn ToTokens, &str)) -> bool {
    match ty {
        syn::Type::Reference(r) => {
            let lone = if role == "argument" {
                " (a function's one argument may be `&str` or `&[u8]`, without a lifetime: \
                 it is read in place in the worker)"
            } else {
                ""
            };
            fail(
                r,
                &format!(
                    "the {role} of a #[parallel] function must be owned, because it travels \
                     between processes: use `String` for `&str`, `Vec<T>` for `&[T]`, `T` for \
                     `&T`{lone}"
                ),
            );
            false
        }
        syn::Type::ImplTrait(t) => {
            fail(
                t,
                &format!(
                    "the {role} of a #[parallel] function must be a concrete type that \
                     implements `Serialize` and `DeserializeOwned`, not `impl Trait`"
                ),
            );
            false
        }
        syn::Type::Paren(p) => check_type(&p.elem, role, fail),
        syn::Type::Group(g) => check_type(&g.elem, role, fail),
        _ => true,
    }
}

/// Whether `ty` names a primitive number type (`u64`, `core::primitive::f64`, ...) or an
/// array of one. Recognised by name: a type alias is not followed, and simply travels as
/// postcard. A local type that shadows a primitive's name fails to compile (it is not one
/// of the runtime's raw types) rather than being sent as bytes.
fn is_plain_number(ty: &syn::Type) -> bool {
    const NUMBERS: [&str; 14] = [
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
        "f32", "f64",
    ];
    match ty {
        syn::Type::Path(p) if p.qself.is_none() => {
            let segs: Vec<String> = p
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            let plain = p.path.segments.iter().all(|s| s.arguments.is_none());
            let name_ok = |name: &String| NUMBERS.contains(&name.as_str());
            plain
                && match segs.as_slice() {
                    [name] => p.path.leading_colon.is_none() && name_ok(name),
                    [krate, module, name] => {
                        (krate == "core" || krate == "std")
                            && module == "primitive"
                            && name_ok(name)
                    }
                    _ => false,
                }
        }
        syn::Type::Array(a) => is_plain_number(&a.elem),
        syn::Type::Paren(p) => is_plain_number(&p.elem),
        syn::Type::Group(g) => is_plain_number(&g.elem),
        _ => false,
    }
}

/// The element type of `Vec<T>` (also spelled `std::vec::Vec<T>` or
/// `alloc::vec::Vec<T>`). Recognised by name, as numbers are: a local type named `Vec`
/// fails to compile rather than being sent as bytes.
fn vec_element(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(p) = ty else {
        return match ty {
            syn::Type::Paren(p) => vec_element(&p.elem),
            syn::Type::Group(g) => vec_element(&g.elem),
            _ => None,
        };
    };
    if p.qself.is_some() {
        return None;
    }
    let segs: Vec<&syn::PathSegment> = p.path.segments.iter().collect();
    let named = |s: &syn::PathSegment, name: &str| s.ident == name && s.arguments.is_none();
    let last = match segs.as_slice() {
        [last] if p.path.leading_colon.is_none() => last,
        [krate, module, last]
            if (named(krate, "std") || named(krate, "alloc")) && named(module, "vec") =>
        {
            last
        }
        _ => return None,
    };
    let syn::PathArguments::AngleBracketed(generic) = &last.arguments else {
        return None;
    };
    match (
        last.ident == "Vec",
        generic.args.iter().collect::<Vec<_>>().as_slice(),
    ) {
        (true, [syn::GenericArgument::Type(elem)]) => Some(elem),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Wire, is_plain_number};

    #[test]
    fn vecs_of_plain_numbers_travel_raw() {
        for (ty, wire) in [
            ("u64", Wire::Raw),
            ("Vec<u8>", Wire::RawVec),
            ("Vec<f64>", Wire::RawVec),
            ("Vec<[f32; 3]>", Wire::RawVec),
            ("std::vec::Vec<i32>", Wire::RawVec),
            ("::alloc::vec::Vec<u16>", Wire::RawVec),
            ("(Vec<u64>)", Wire::RawVec),
            ("Vec<bool>", Wire::Postcard),
            ("Vec<Vec<u8>>", Wire::Postcard),
            ("Vec<String>", Wire::Postcard),
            ("Vec<u8, A>", Wire::Postcard),
            ("my::Vec<u8>", Wire::Postcard),
            ("std::vec::Vec::<u8>", Wire::RawVec),
            ("VecDeque<u8>", Wire::Postcard),
            ("Box<[u8]>", Wire::Postcard),
            ("String", Wire::Postcard),
            ("(u64, f32)", Wire::RawTuple),
            ("(u8,)", Wire::RawTuple),
            ("(u64, [u8; 4], i128)", Wire::RawTuple),
            (
                "(u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8)",
                Wire::RawTuple,
            ),
            (
                "(u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8)",
                Wire::Postcard,
            ),
            ("()", Wire::Postcard),
            ("(u64, String)", Wire::Postcard),
            ("(u64, (u64, u64))", Wire::Postcard),
        ] {
            assert_eq!(Wire::of(&syn::parse_str(ty).unwrap()), wire, "{ty}");
        }
        let args = |tys: &[&str]| -> Vec<syn::Type> {
            tys.iter().map(|t| syn::parse_str(t).unwrap()).collect()
        };
        assert_eq!(Wire::of_args(&args(&["u64", "f64"])), Wire::RawTuple);
        assert_eq!(Wire::of_args(&args(&["u64"])), Wire::Raw);
        assert_eq!(Wire::of_args(&args(&["(u64, u32)"])), Wire::RawTuple);
        assert_eq!(Wire::of_args(&args(&["u64", "bool"])), Wire::Postcard);
        assert_eq!(Wire::of_args(&args(&[])), Wire::Postcard);
    }

    #[test]
    fn plain_numbers_are_recognised_by_name() {
        for yes in [
            "u64",
            "f32",
            "isize",
            "[u8; 32]",
            "[[f64; 3]; 4]",
            "core::primitive::u32",
            "::std::primitive::i128",
            "(u16)",
        ] {
            assert!(is_plain_number(&syn::parse_str(yes).unwrap()), "{yes}");
        }
        for no in [
            "bool",
            "char",
            "String",
            "Vec<u64>",
            "(u64, u64)",
            "()",
            "[bool; 4]",
            "my::u64",
            "::u64",
            "Option<u8>",
            "u64<T>",
        ] {
            assert!(!is_plain_number(&syn::parse_str(no).unwrap()), "{no}");
        }
    }
}

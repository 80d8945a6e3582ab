//! `#[spacelock_testkit::test]`: registers a test function with the kit's
//! harness (see `spacelock_testkit`), which can report a test as skipped at
//! run time. Written against `proc_macro` alone (no `syn`), because it only
//! needs the function's name, whether it is `async`, and its body.

use proc_macro::{Delimiter, Group, TokenStream, TokenTree};

/// Registers `fn name() { … }` (or `async fn name() { … }`, run on a
/// two-worker multi-thread tokio runtime, or on a current-thread one with
/// `#[spacelock_testkit::test(current_thread)]`) as a test of this binary.
#[proc_macro_attribute]
pub fn test(attr: TokenStream, item: TokenStream) -> TokenStream {
    let runtime = match attr.to_string().as_str() {
        "" => "new_multi_thread().worker_threads(2)",
        "current_thread" => "new_current_thread()",
        _ => return error("#[spacelock_testkit::test] takes no argument but `current_thread`"),
    };
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    let Some(fn_at) = tokens
        .iter()
        .position(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "fn"))
    else {
        return error("#[spacelock_testkit::test] goes on a function");
    };
    let name = match tokens.get(fn_at + 1) {
        Some(TokenTree::Ident(i)) => i.clone(),
        _ => return error("expected the function's name after `fn`"),
    };
    let Some(TokenTree::Group(body)) = tokens.last() else {
        return error("expected the function's body");
    };
    let is_async = tokens[..fn_at]
        .iter()
        .any(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "async"));

    let mut out = TokenStream::new();
    // Everything up to the body, minus `async`.
    out.extend(
        tokens[..tokens.len() - 1]
            .iter()
            .filter(|t| !matches!(t, TokenTree::Ident(i) if i.to_string() == "async"))
            .cloned(),
    );
    if is_async {
        let mut run: TokenStream = format!(
            "::tokio::runtime::Builder::{runtime}.enable_all().build() \
             .expect(\"a tokio runtime\").block_on"
        )
        .parse()
        .expect("valid tokens");
        let mut arg: TokenStream = "async move".parse().expect("valid tokens");
        arg.extend([TokenTree::Group(body.clone())]);
        run.extend([TokenTree::Group(Group::new(Delimiter::Parenthesis, arg))]);
        run.extend("; ".parse::<TokenStream>().expect("valid tokens"));
        out.extend([TokenTree::Group(Group::new(Delimiter::Brace, run))]);
    } else {
        out.extend([TokenTree::Group(body.clone())]);
    }
    let reg = format!(
        "#[::spacelock_testkit::linkme::distributed_slice(::spacelock_testkit::TESTS)] \
         #[linkme(crate = ::spacelock_testkit::linkme)] \
         #[allow(non_upper_case_globals)] \
         static __spacelock_test_{name}: ::spacelock_testkit::Case = \
         ::spacelock_testkit::Case {{ name: \"{name}\", run: {name} }};"
    );
    out.extend(reg.parse::<TokenStream>().expect("valid tokens"));
    out
}

fn error(msg: &str) -> TokenStream {
    format!("compile_error!({msg:?});")
        .parse()
        .expect("valid tokens")
}

//! # manta-macros: `#[manta::remote]`
//!
//! Turns a function into a *remote function*: a unit struct of the same name that knows its
//! registered name, plus an [`inventory`](https://docs.rs/inventory) registration so that every
//! process running this binary (the driver, and worker processes started from its executable)
//! can find the function by name.
//!
//! A batch function, the kind `map_batches` runs, takes one `RecordBatch` and returns a
//! `RecordBatch` or a `Result` of one:
//!
//! ```ignore
//! #[manta::remote]
//! fn add_upper(batch: RecordBatch) -> manta::Result<RecordBatch> { ... }
//!
//! ds.map_batches(add_upper);          // the struct is the handle
//! add_upper::call(batch)?;            // a plain local call
//! ```
//!
//! The generated code refers to the engine as `::manta::engine`; inside Manta's own crates,
//! `#[remote(engine = manta_engine)]` points it elsewhere.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::{FnArg, ItemFn, Path, ReturnType, parse_macro_input};

/// Registers a batch function by name and makes a handle of it; see the crate docs.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut engine: Path = syn::parse_quote!(::manta::engine);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("engine") {
            engine = meta.value()?.parse()?;
            Ok(())
        } else {
            Err(meta.error("unknown #[remote] option; the only one is `engine = path`"))
        }
    });
    if let Err(e) = parser.parse(attr) {
        return e.to_compile_error().into();
    }
    let function = parse_macro_input!(item as ItemFn);
    match expand_batch_fn(&engine, function) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_batch_fn(engine: &Path, function: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &function.sig;
    if sig.inputs.len() != 1 || matches!(sig.inputs.first(), Some(FnArg::Receiver(_))) {
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            "#[manta::remote] batch functions take exactly one argument, a RecordBatch",
        ));
    }
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            sig,
            "#[manta::remote] functions cannot be async or generic",
        ));
    }
    if matches!(sig.output, ReturnType::Default) {
        return Err(syn::Error::new_spanned(
            sig,
            "#[manta::remote] batch functions return a RecordBatch or a Result of one",
        ));
    }
    let vis = &function.vis;
    let name = &sig.ident;
    let attrs = &function.attrs;
    let inputs = &sig.inputs;
    let output = &sig.output;
    let body = &function.block;
    let erased = format_ident!("__manta_erased_{}", name, span = Span::call_site());
    let name_str = name.to_string();
    Ok(quote! {
        #(#attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #name;

        impl #name {
            /// The name this function is registered under.
            pub const NAME: &'static str = concat!(module_path!(), "::", #name_str);

            /// Calls the function here, in this thread.
            pub fn call(#inputs) #output #body
        }

        impl #engine::RemoteBatchFn for #name {
            fn name(&self) -> &'static str {
                Self::NAME
            }
        }

        const _: () = {
            fn #erased(
                batch: #engine::registry::RecordBatch,
            ) -> ::std::result::Result<#engine::registry::RecordBatch, #engine::BoxError> {
                #engine::registry::IntoBatchResult::into_batch_result(#name::call(batch))
            }
            #engine::inventory::submit! {
                #engine::RemoteFunction { name: #name::NAME, kind: #engine::FunctionKind::Batch(#erased) }
            }
        };
    })
}

//! # manta-macros: `#[manta::remote]` and `#[manta::callable]`
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
//! A row function takes one value of a serde type and returns a value of a serde type (or a
//! `Result` of one): a row for `map`, a `Vec` of rows for `flat_map`, a `bool` for `filter_fn`.
//! Rows travel to it as JSON values, so it is convenient rather than fast; `map_batches` is
//! the fast path.
//!
//! Any other function of serde arguments (none, or several, or one returning nothing) is a
//! *task function* (Ray's `@ray.remote def`); a one-argument row function is one too:
//!
//! ```ignore
//! #[manta::remote]
//! fn add(a: i64, b: i64) -> i64 { a + b }
//!
//! let sum = add.remote(&ctx, 5, 10);       // ObjectRef<i64>, at once
//! let more = add.remote(&ctx, &sum, 1);    // a ref as an argument: resolved before it runs
//! add.remote_with(&ctx, &options, 1, 2);   // resources, retries
//! ```
//!
//! Its task body is registered under `NAME` + `"/task"`; arguments travel encoded with
//! postcard (see `manta_tasks::args`).
//!
//! `#[manta::callable]` on an `impl manta::Callable for T` block registers a stateful batch
//! function (Ray's callable class): built once per worker, reused across batches.
//!
//! The generated code refers to the engine as `::manta::engine`; inside Manta's own crates,
//! `#[remote(engine = manta_engine)]` points it elsewhere.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::{FnArg, ItemFn, ItemImpl, Path, ReturnType, Type, parse_macro_input};

/// Registers a batch function by name and makes a handle of it; see the crate docs.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let (engine, tasks) = match crate_paths(attr, "remote") {
        Ok(paths) => paths,
        Err(e) => return e.to_compile_error().into(),
    };
    let function = parse_macro_input!(item as ItemFn);
    if let Err(e) = check_plain(&function) {
        return e.to_compile_error().into();
    }
    let returns_nothing = matches!(function.sig.output, ReturnType::Default);
    let returns_batch = match &function.sig.output {
        ReturnType::Type(_, ty) if last_segment_is(ty, "Result") => {
            result_ok_type(ty).is_ok_and(|ok| last_segment_is(&ok, "RecordBatch"))
        }
        ReturnType::Type(_, ty) => last_segment_is(ty, "RecordBatch"),
        ReturnType::Default => false,
    };
    let batch_to_value = takes_record_batch(&function) && !returns_batch;
    let expanded = if function.sig.inputs.len() != 1 || returns_nothing || batch_to_value {
        expand_task_only_fn(&engine, &tasks, function)
    } else if takes_record_batch(&function) {
        // A batch function is a task function of one batch too.
        let task = expand_task_part(&engine, &tasks, &function);
        expand_batch_fn(&engine, function).and_then(|batch| {
            let task = task?;
            Ok(quote! { #batch #task })
        })
    } else {
        expand_row_fn(&engine, &function).and_then(|row| {
            let task = expand_task_part(&engine, &tasks, &function)?;
            Ok(quote! { #row #task })
        })
    };
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The `engine = path` and `tasks = path` options of `#[remote]` and `#[actor]`: where the
/// generated code finds Manta's crates (`::manta::engine`, `::manta::tasks` by default).
fn crate_paths(attr: TokenStream, macro_name: &str) -> syn::Result<(Path, Path)> {
    let mut engine: Path = syn::parse_quote!(::manta::engine);
    let mut tasks: Path = syn::parse_quote!(::manta::tasks);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("engine") {
            engine = meta.value()?.parse()?;
            Ok(())
        } else if meta.path.is_ident("tasks") {
            tasks = meta.value()?.parse()?;
            Ok(())
        } else {
            Err(meta.error(format!(
                "unknown #[{macro_name}] option; they are `engine = path`, `tasks = path`"
            )))
        }
    });
    parser.parse(attr)?;
    Ok((engine, tasks))
}

/// The handle every remote function gets: a unit struct of the function's name, with the name
/// it is registered under and the function itself as a plain `call`.
fn handle_struct(function: &ItemFn) -> proc_macro2::TokenStream {
    let sig = &function.sig;
    let (vis, name, attrs) = (&function.vis, &sig.ident, &function.attrs);
    let (inputs, output, body) = (&sig.inputs, &sig.output, &function.block);
    let name_str = name.to_string();
    quote! {
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
    }
}

/// Not async, not generic, no `self`.
fn check_plain(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            sig,
            "#[manta::remote] functions cannot be async or generic",
        ));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new_spanned(
            receiver,
            "#[manta::remote] goes on free functions; for methods see #[manta::actor]",
        ));
    }
    Ok(())
}

/// A task function of any number of serde arguments other than one: the handle struct, its
/// plain `call`, and the task part.
fn expand_task_only_fn(
    engine: &Path,
    tasks: &Path,
    function: ItemFn,
) -> syn::Result<proc_macro2::TokenStream> {
    let handle = handle_struct(&function);
    let task = expand_task_part(engine, tasks, &function)?;
    Ok(quote! {
        #handle

        #task
    })
}

/// The remote-call part of a function of serde arguments: `remote`, `remote_with`, and the
/// registration of its task body under `NAME` + `"/task"`.
fn expand_task_part(
    engine: &Path,
    tasks: &Path,
    function: &ItemFn,
) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &function.sig;
    let name = &sig.ident;
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Typed(arg) => types.push(arg.ty.as_ref().clone()),
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "remote functions take no `self`",
                ));
            }
        }
    }
    let args: Vec<_> = (0..types.len())
        .map(|i| format_ident!("__manta_arg{}", i, span = Span::call_site()))
        .collect();
    let (value_type, returns_result) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) if last_segment_is(ty, "Result") => (result_ok_type(ty)?, true),
        ReturnType::Type(_, ty) => (ty.as_ref().clone(), false),
    };
    let value_type: Type = value_type;
    // Record batches travel as blocks (zero-copy in one process), other values with postcard.
    let is_batch: Vec<bool> = types
        .iter()
        .map(|t| last_segment_is(t, "RecordBatch"))
        .collect();
    let returns_batch = last_segment_is(&value_type, "RecordBatch");
    let output = if returns_batch {
        quote! { #tasks::output_batch(value) }
    } else {
        quote! { #tasks::output(#name::TASK_NAME, value) }
    };
    let call = if returns_result {
        quote! {
            match #name::call(#(#args),*) {
                ::std::result::Result::Ok(value) => #output,
                ::std::result::Result::Err(error) => ::std::result::Result::Err(#tasks::user_error(#name::TASK_NAME, error)),
            }
        }
    } else {
        quote! {{ let value = #name::call(#(#args),*); #output }}
    };
    let pushes: Vec<_> = args
        .iter()
        .zip(&types)
        .zip(&is_batch)
        .map(|((arg, ty), batch)| {
            if *batch {
                quote! { args.push_batch(#arg.into()); }
            } else {
                quote! { args.push::<#ty>(#arg.into()); }
            }
        })
        .collect();
    let reads: Vec<_> = args
        .iter()
        .zip(&types)
        .zip(&is_batch)
        .enumerate()
        .map(|(index, ((arg, ty), batch))| {
            if *batch {
                quote! { let #arg: #ty = args.batch(#index)?; }
            } else {
                quote! { let #arg: #ty = args.get(#index)?; }
            }
        })
        .collect();
    let erased = format_ident!("__manta_task_{}", name, span = Span::call_site());
    let unary = match types.as_slice() {
        [arg] if !is_batch[0] && !returns_batch => quote! {
            impl #tasks::UnaryTask for #name {
                type Arg = #arg;
                type Output = #value_type;
                const TASK: &'static str = #name::TASK_NAME;
            }
        },
        _ => quote! {},
    };
    Ok(quote! {
        impl #name {
            /// The name this function's task body is registered under.
            pub const TASK_NAME: &'static str = concat!(module_path!(), "::", stringify!(#name), "/task");

            /// Runs the function as a task (one CPU); returns a ref to its result at once.
            /// Each argument is a value or a ref to one.
            #[allow(clippy::too_many_arguments)]
            pub fn remote(
                &self,
                runtime: &impl #tasks::Runtime,
                #(#args: impl ::std::convert::Into<#tasks::Arg<#types>>),*
            ) -> #tasks::ObjectRef<#value_type> {
                self.remote_with(runtime, &::std::default::Default::default(), #(#args),*)
            }

            /// [`Self::remote`] with options: resources, retries.
            #[allow(clippy::too_many_arguments)]
            pub fn remote_with(
                &self,
                runtime: &impl #tasks::Runtime,
                options: &#tasks::TaskOptions,
                #(#args: impl ::std::convert::Into<#tasks::Arg<#types>>),*
            ) -> #tasks::ObjectRef<#value_type> {
                #[allow(unused_mut)]
                let mut args = #tasks::Args::new();
                #( #pushes )*
                #tasks::submit(runtime, Self::TASK_NAME, args, options)
            }
        }

        #unary

        const _: () = {
            fn #erased(
                _ctx: &#engine::TaskContext,
                input: #engine::TaskInput,
            ) -> #engine::Result<#engine::Object> {
                #[allow(unused_variables)]
                let args = #tasks::TaskArgs::decode(#name::TASK_NAME, input)?;
                #( #reads )*
                #call
            }
            #engine::inventory::submit! {
                #engine::RemoteFunction { name: #name::TASK_NAME, kind: #engine::FunctionKind::Task(#erased) }
            }
        };
    })
}

/// `T` of a `Result<T, E>` (or of an alias `Result<T>`).
fn result_ok_type(ty: &Type) -> syn::Result<Type> {
    if let Type::Path(p) = ty
        && let Some(segment) = p.path.segments.last()
        && let syn::PathArguments::AngleBracketed(generics) = &segment.arguments
        && let Some(syn::GenericArgument::Type(ok)) = generics.args.first()
    {
        return Ok(ok.clone());
    }
    Err(syn::Error::new_spanned(
        ty,
        "#[manta::remote]: cannot see the value type of this Result",
    ))
}

/// Whether the function's one argument is a `RecordBatch` (by its type's last path segment).
fn takes_record_batch(function: &ItemFn) -> bool {
    match function.sig.inputs.first() {
        Some(FnArg::Typed(arg)) => last_segment_is(&arg.ty, "RecordBatch"),
        _ => true,
    }
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == name))
}

fn check_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    if sig.inputs.len() != 1 || matches!(sig.inputs.first(), Some(FnArg::Receiver(_))) {
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            "#[manta::remote] functions take exactly one argument: a RecordBatch (map_batches) \
             or a row of a serde type (map, flat_map, filter_fn)",
        ));
    }
    Ok(())
}

/// A row function `fn(T) -> U` or `fn(T) -> Result<U, E>` (T: Deserialize, U: Serialize),
/// registered erased to JSON values.
fn expand_row_fn(engine: &Path, function: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    check_signature(function)?;
    let sig = &function.sig;
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            sig,
            "#[manta::remote] functions cannot be async or generic",
        ));
    }
    let returns_result = match &sig.output {
        ReturnType::Default => {
            return Err(syn::Error::new_spanned(
                sig,
                "#[manta::remote] row functions return a value of a serde type (a row, a Vec of \
                 rows, or a bool) or a Result of one",
            ));
        }
        ReturnType::Type(_, ty) => last_segment_is(ty, "Result"),
    };
    let name = &sig.ident;
    let Some(FnArg::Typed(arg)) = sig.inputs.first() else {
        unreachable!("checked")
    };
    let row_type = &arg.ty;
    let erased = format_ident!("__manta_erased_{}", name, span = Span::call_site());
    let handle = handle_struct(function);
    let call = if returns_result {
        quote! { #name::call(row).map_err(::std::convert::Into::<#engine::BoxError>::into)? }
    } else {
        quote! { #name::call(row) }
    };
    Ok(quote! {
        #handle

        impl #engine::RemoteRowFn for #name {
            fn name(&self) -> &'static str {
                Self::NAME
            }
        }


        const _: () = {
            fn #erased(
                value: #engine::serde_json::Value,
            ) -> ::std::result::Result<#engine::serde_json::Value, #engine::BoxError> {
                let row: #row_type = #engine::serde_json::from_value(value)?;
                let out = #call;
                ::std::result::Result::Ok(#engine::serde_json::to_value(out)?)
            }
            #engine::inventory::submit! {
                #engine::RemoteFunction { name: #name::NAME, kind: #engine::FunctionKind::Row(#erased) }
            }
        };
    })
}

fn expand_batch_fn(engine: &Path, function: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    check_signature(&function)?;
    let sig = &function.sig;
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
    let name = &sig.ident;
    let erased = format_ident!("__manta_erased_{}", name, span = Span::call_site());
    let handle = handle_struct(&function);
    Ok(quote! {
        #handle

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

/// Registers a stateful batch function: put it on the `impl manta::Callable for T` block.
/// Workers build `T` from its name and arguments once and reuse it across batches;
/// `ds.map_batches_callable::<T>(args, options)` runs it.
#[proc_macro_attribute]
pub fn callable(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut engine: Path = syn::parse_quote!(::manta::engine);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("engine") {
            engine = meta.value()?.parse()?;
            Ok(())
        } else {
            Err(meta.error("unknown #[callable] option; the only one is `engine = path`"))
        }
    });
    if let Err(e) = parser.parse(attr) {
        return e.to_compile_error().into();
    }
    let block = parse_macro_input!(item as ItemImpl);
    if block.trait_.is_none() {
        return syn::Error::new_spanned(
            &block.self_ty,
            "#[manta::callable] goes on an `impl manta::Callable for T` block",
        )
        .to_compile_error()
        .into();
    }
    let self_ty = &block.self_ty;
    let Type::Path(type_path) = self_ty.as_ref() else {
        return syn::Error::new_spanned(self_ty, "#[manta::callable] needs a named type")
            .to_compile_error()
            .into();
    };
    let type_name = type_path
        .path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    quote! {
        #block

        impl #engine::RegisteredCallable for #self_ty {
            const NAME: &'static str = concat!(module_path!(), "::", #type_name);
        }

        #engine::inventory::submit! {
            #engine::RemoteFunction {
                name: <#self_ty as #engine::RegisteredCallable>::NAME,
                kind: #engine::FunctionKind::Callable(#engine::callable::factory::<#self_ty>),
            }
        }
    }
    .into()
}

/// Makes the type of an `impl` block an actor (Ray's `@ray.remote class`): its `new` is the
/// constructor, its `&self`/`&mut self` methods are the actor's methods. See
/// `manta_tasks::actor`.
///
/// ```ignore
/// #[manta::actor]
/// impl Counter {
///     pub fn new(start: i64) -> Self { ... }
///     pub fn incr(&mut self, by: i64) -> i64 { ... }
/// }
/// let counter = Counter::remote(&ctx, 0)?;   // CounterHandle
/// let one = counter.incr(1);                 // ObjectRef<i64>
/// ```
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let (engine, tasks) = match crate_paths(attr, "actor") {
        Ok(paths) => paths,
        Err(e) => return e.to_compile_error().into(),
    };
    let block = parse_macro_input!(item as ItemImpl);
    expand_actor(&engine, &tasks, block)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// One method (or the constructor) of an actor: its name, argument types, value type, and
/// whether it returns a `Result`.
struct ActorMethod {
    name: syn::Ident,
    types: Vec<Type>,
    value_type: Type,
    returns_result: bool,
}

impl ActorMethod {
    fn parse(method: &syn::ImplItemFn) -> syn::Result<Self> {
        let mut types = Vec::new();
        for input in &method.sig.inputs {
            if let FnArg::Typed(arg) = input {
                types.push(arg.ty.as_ref().clone());
            }
        }
        let (value_type, returns_result) = match &method.sig.output {
            ReturnType::Default => (syn::parse_quote!(()), false),
            ReturnType::Type(_, ty) if last_segment_is(ty, "Result") => (result_ok_type(ty)?, true),
            ReturnType::Type(_, ty) => (ty.as_ref().clone(), false),
        };
        Ok(Self {
            name: method.sig.ident.clone(),
            types,
            value_type,
            returns_result,
        })
    }

    fn args(&self) -> Vec<syn::Ident> {
        (0..self.types.len())
            .map(|i| format_ident!("__manta_arg{}", i, span = Span::call_site()))
            .collect()
    }
}

fn expand_actor(
    engine: &Path,
    tasks: &Path,
    block: ItemImpl,
) -> syn::Result<proc_macro2::TokenStream> {
    if block.trait_.is_some() || !block.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &block.self_ty,
            "#[manta::actor] goes on a plain `impl Type { ... }` block, without generics",
        ));
    }
    let self_ty = &block.self_ty;
    let Type::Path(type_path) = self_ty.as_ref() else {
        return Err(syn::Error::new_spanned(
            self_ty,
            "#[manta::actor] needs a named type",
        ));
    };
    let type_ident = type_path
        .path
        .segments
        .last()
        .map(|s| s.ident.clone())
        .ok_or_else(|| syn::Error::new_spanned(self_ty, "#[manta::actor] needs a named type"))?;
    let type_name = type_ident.to_string();
    let handle = format_ident!("{}Handle", type_ident);
    let mut constructor = None;
    let mut methods = Vec::new();
    for item in &block.items {
        let syn::ImplItem::Fn(method) = item else {
            continue;
        };
        let has_receiver = matches!(method.sig.inputs.first(), Some(FnArg::Receiver(_)));
        if has_receiver {
            methods.push(ActorMethod::parse(method)?);
        } else if method.sig.ident == "new" {
            constructor = Some(ActorMethod::parse(method)?);
        }
    }
    let constructor = constructor.ok_or_else(|| {
        syn::Error::new_spanned(
            self_ty,
            "#[manta::actor]: the block needs a `fn new(...) -> Self`",
        )
    })?;

    let class = quote! { <#self_ty as #tasks::ActorClass>::CLASS };
    let new_args = constructor.args();
    let new_types = &constructor.types;
    let new_indices: Vec<_> = (0..new_types.len()).collect();
    let new_name = quote! { concat!(module_path!(), "::", #type_name, "::new/actor") };
    let build = if constructor.returns_result {
        quote! {
            match <#self_ty>::new(#(#new_args),*) {
                ::std::result::Result::Ok(value) => value,
                ::std::result::Result::Err(error) => {
                    return ::std::result::Result::Err(#tasks::user_error(NAME, error));
                }
            }
        }
    } else {
        quote! { <#self_ty>::new(#(#new_args),*) }
    };

    let mut handle_methods = Vec::new();
    let mut bodies = Vec::new();
    for method in &methods {
        let name = &method.name;
        let args = method.args();
        let types = &method.types;
        let indices: Vec<_> = (0..types.len()).collect();
        let value_type = &method.value_type;
        let task_name =
            quote! { concat!(module_path!(), "::", #type_name, "::", stringify!(#name), "/actor") };
        let erased = format_ident!("__manta_actor_{}", name, span = Span::call_site());
        handle_methods.push(quote! {
            /// Queues a call of the actor's method of this name; returns a ref to its result at
            /// once. Calls run one at a time, in the order made.
            #[allow(clippy::too_many_arguments)]
            pub fn #name(
                &self,
                #(#args: impl ::std::convert::Into<#tasks::Arg<#types>>),*
            ) -> #tasks::ObjectRef<#value_type> {
                #[allow(unused_mut)]
                let mut args = #tasks::Args::new();
                #( args.push::<#types>(#args.into()); )*
                self.0.call(#task_name, args)
            }
        });
        let finish = if method.returns_result {
            quote! {
                match value {
                    ::std::result::Result::Ok(value) => #tasks::output(NAME, value),
                    ::std::result::Result::Err(error) => ::std::result::Result::Err(#tasks::user_error(NAME, error)),
                }
            }
        } else {
            quote! { #tasks::output(NAME, value) }
        };
        bodies.push(quote! {
            const _: () = {
                const NAME: &str = #task_name;
                fn #erased(
                    _ctx: &#engine::TaskContext,
                    input: #engine::TaskInput,
                ) -> #engine::Result<#engine::Object> {
                    let args = #tasks::TaskArgs::decode(NAME, input)?;
                    let actor = args.actor()?;
                    #( let #args: #types = args.get(#indices)?; )*
                    let value = #engine::actor::with(actor, #class, |this: &mut #self_ty| {
                        this.#name(#(#args),*)
                    })?;
                    #finish
                }
                #engine::inventory::submit! {
                    #engine::RemoteFunction { name: NAME, kind: #engine::FunctionKind::Task(#erased) }
                }
            };
        });
    }

    Ok(quote! {
        #block

        /// A handle on a live actor of this type: one method per actor method, each returning
        /// an object ref at once. Derefs to `ActorRef` (`kill`, `id`).
        #[derive(Clone, Debug)]
        pub struct #handle(#tasks::ActorRef);

        impl ::std::convert::From<#tasks::ActorRef> for #handle {
            fn from(actor: #tasks::ActorRef) -> Self {
                Self(actor)
            }
        }

        impl ::std::ops::Deref for #handle {
            type Target = #tasks::ActorRef;

            fn deref(&self) -> &#tasks::ActorRef {
                &self.0
            }
        }

        impl #handle {
            #(#handle_methods)*
        }

        impl #tasks::ActorClass for #self_ty {
            const CLASS: &'static str = concat!(module_path!(), "::", #type_name);
            type Handle = #handle;
        }

        impl #self_ty {
            /// Starts the actor on a worker (no resources held, no restarts); returns its handle
            /// at once, before the constructor has run.
            #[allow(clippy::too_many_arguments)]
            pub fn remote(
                runtime: &impl #tasks::Runtime,
                #(#new_args: impl ::std::convert::Into<#tasks::Arg<#new_types>>),*
            ) -> #tasks::Result<#handle> {
                Self::remote_with(runtime, &::std::default::Default::default(), #(#new_args),*)
            }

            /// [`Self::remote`] with options: resources, restarts, a name.
            #[allow(clippy::too_many_arguments)]
            pub fn remote_with(
                runtime: &impl #tasks::Runtime,
                options: &#tasks::ActorOptions,
                #(#new_args: impl ::std::convert::Into<#tasks::Arg<#new_types>>),*
            ) -> #tasks::Result<#handle> {
                #[allow(unused_mut)]
                let mut args = #tasks::Args::new();
                #( args.push::<#new_types>(#new_args.into()); )*
                #tasks::ActorRef::create(runtime, #class, #new_name, args, options).map(#handle)
            }
        }

        const _: () = {
            const NAME: &str = #new_name;
            fn __manta_actor_new(
                _ctx: &#engine::TaskContext,
                input: #engine::TaskInput,
            ) -> #engine::Result<#engine::Object> {
                let args = #tasks::TaskArgs::decode(NAME, input)?;
                let actor = args.actor()?;
                #( let #new_args: #new_types = args.get(#new_indices)?; )*
                let value: #self_ty = #build;
                #engine::actor::insert(actor, ::std::boxed::Box::new(value));
                #tasks::output(NAME, ())
            }
            #engine::inventory::submit! {
                #engine::RemoteFunction { name: NAME, kind: #engine::FunctionKind::Task(__manta_actor_new) }
            }
        };

        #(#bodies)*
    })
}

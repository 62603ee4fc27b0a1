//! The loopback and in-process tests, one binary with a module per topic:
//! one link instead of one per file, which is most of a test build's time.
//! The tests that need a process of their own (the panic hook, the leak
//! check's counting allocator, the browser and the soak) are separate.

#[path = "../common/mod.rs"]
mod common;

mod abort;
mod body_model;
mod continued;
mod grpc;
mod ignore_abort;
mod logic;
mod matrix;
mod no_false_abort;
mod progress_stream;
mod real_stacks;
mod shutdown;
mod state;
mod time_limit;
mod watch;

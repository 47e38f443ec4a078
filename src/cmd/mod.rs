//! One module per `molly` subcommand.

pub mod bench;
pub mod bench_net;
pub mod demo;
pub mod serve;
pub mod signer;
pub mod sim;
pub mod wallets;

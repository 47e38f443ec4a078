//! The reference model in the simulator: the engine's reference model
//! ([`molly_engine::model`], an independent implementation of the documented
//! semantics) with the shard layer's reserved ids, fed exactly the commands
//! each acknowledged journal group holds (ticks, account batches, transfer
//! batches as the clients sent them). It knows one shard only: no
//! cross-shard legs.

pub use molly_engine::model::Model;
use molly_engine::Config;

use crate::cross::is_reserved;
use crate::durable::Outcome;
use crate::journal::CommandBuf;

/// A model of one shard with `config`'s limits and assets.
pub fn new(config: Config) -> Model {
    Model::new(config).reserving(is_reserved)
}

/// Applies one journaled command; returns what the shard answers for it.
pub fn apply(model: &mut Model, command: &CommandBuf) -> Outcome {
    match command {
        CommandBuf::Tick { now_ns } => Outcome::Ticked { expired: model.tick(*now_ns) },
        CommandBuf::CreateAccounts(batch) => Outcome::Accounts(model.create_accounts(batch)),
        CommandBuf::CreateTransfers(batch) => Outcome::Transfers(model.create_transfers(batch)),
        CommandBuf::Credits(_) | CommandBuf::Settles(_) => {
            unreachable!("the model is of one shard: no cross-shard legs")
        }
    }
}

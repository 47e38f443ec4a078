//! Property tests: random batches against the reference model
//! (`molly_engine::model`, the `model` feature: the documented semantics
//! written a second time for obviousness, not speed; the simulator checks
//! the shards against the same model).
//!
//! After every command, the engine must agree with it on every result code,
//! every account and transfer record, every transfer state, the clock and
//! the last timestamp, every balance history and every transfer query; the
//! model's own conservation must hold, and the engine's invariants
//! (conservation per ledger, limits, timestamps).

use molly_engine::model::Model;
use molly_engine::{
    Account, AccountFilter, AccountFilterFlags, AccountFlags as AF, Config, CreateTransferResult as TR,
    Engine, Transfer, TransferFlags as TF,
};
use proptest::prelude::*;

const NS: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
enum Command {
    Accounts(Vec<Account>),
    Transfers(Vec<Transfer>),
    Tick(u64),
}

fn small_amount() -> impl Strategy<Value = u128> {
    prop_oneof![
        4 => 0u128..200,
        1 => Just(0u128),
        1 => Just(u128::MAX),
        1 => Just(u128::MAX - 1),
        1 => (u128::MAX / 2 - 2)..(u128::MAX / 2 + 2),
    ]
}

fn account_strategy() -> impl Strategy<Value = Account> {
    (
        0u128..10,
        prop_oneof![8 => Just(1u32), 2 => Just(2u32), 1 => Just(0u32), 1 => Just(77u32)],
        prop_oneof![8 => Just(1u16), 1 => Just(0u16), 1 => Just(2u16)],
        prop_oneof![
            4 => Just(0u16),
            3 => Just(AF::DEBITS_MUST_NOT_EXCEED_CREDITS.0),
            1 => Just(AF::CREDITS_MUST_NOT_EXCEED_DEBITS.0),
            2 => Just(AF::HISTORY.0),
            2 => Just(AF::LINKED.0),
            1 => 0u16..64,
        ],
        prop_oneof![20 => Just(0u128), 1 => 1u128..3],
        prop_oneof![20 => Just(0u64), 1 => Just(1u64)],
    )
        .prop_map(|(id, ledger, code, flags, user_data_128, timestamp)| Account {
            id,
            ledger,
            code,
            flags: AF(flags),
            user_data_128,
            timestamp,
            ..Account::default()
        })
}

fn transfer_strategy() -> impl Strategy<Value = Transfer> {
    let flags = prop_oneof![
        6 => Just(0u16),
        4 => Just(TF::PENDING.0),
        3 => Just(TF::POST_PENDING.0),
        2 => Just(TF::VOID_PENDING.0),
        2 => Just(TF::LINKED.0),
        1 => Just(TF::LINKED.0 | TF::PENDING.0),
        1 => Just(TF::BALANCING_DEBIT.0),
        1 => Just(TF::BALANCING_CREDIT.0),
        1 => Just(TF::PENDING.0 | TF::CLOSING_DEBIT.0),
        1 => Just(TF::PENDING.0 | TF::CLOSING_CREDIT.0),
        1 => 0u16..512,
    ];
    (
        (0u128..40, 0u128..11, 0u128..11, small_amount()),
        (
            prop_oneof![4 => Just(0u128), 3 => 1u128..40],
            prop_oneof![3 => Just(0u32), 1 => 1u32..4, 1 => 1099u32..1101, 1 => Just(u32::MAX)],
            prop_oneof![6 => Just(1u32), 1 => Just(2u32), 1 => Just(0u32)],
            prop_oneof![6 => Just(1u16), 1 => Just(0u16), 1 => Just(2u16)],
            flags,
            prop_oneof![6 => Just(0u64), 1 => 1u64..3],
        ),
    )
        .prop_map(
            |((id, debit, credit, amount), (pending_id, timeout, ledger, code, flags, user_data_64))| {
                Transfer {
                    id,
                    debit_account_id: debit,
                    credit_account_id: credit,
                    amount,
                    pending_id,
                    timeout,
                    ledger,
                    code,
                    flags: TF(flags),
                    user_data_64,
                    ..Transfer::default()
                }
            },
        )
}

fn command_strategy() -> impl Strategy<Value = Command> {
    prop_oneof![
        2 => prop::collection::vec(account_strategy(), 0..8).prop_map(Command::Accounts),
        6 => prop::collection::vec(transfer_strategy(), 0..16).prop_map(Command::Transfers),
        1 => prop_oneof![4 => 0u64..3 * NS, 1 => Just(u64::MAX - NS)].prop_map(Command::Tick),
    ]
}

fn config() -> Config {
    Config { accounts_max: 8, transfers_max: 48, ..Config::default() }
}

/// Applies one command to both and checks that they agree on everything.
fn step(engine: &mut Engine, model: &mut Model, command: &Command) -> Result<(), TestCaseError> {
    match command {
        Command::Accounts(batch) => {
            let mut results = Vec::new();
            engine.create_accounts(batch, &mut results).unwrap();
            prop_assert_eq!(results, model.create_accounts(batch));
        }
        Command::Transfers(batch) => {
            let mut results = Vec::new();
            engine.create_transfers(batch, &mut results).unwrap();
            prop_assert_eq!(results, model.create_transfers(batch));
        }
        Command::Tick(advance) => {
            let now = engine.clock_ns().saturating_add(*advance);
            let mut expired = Vec::new();
            engine.tick(now, &mut expired);
            prop_assert_eq!(expired, model.tick(now));
        }
    }
    // Accounts, every transfer (records and lookups), every transfer's
    // state, clock, last timestamp, balance histories; no open pending
    // transfer past its expiry.
    model.check(engine, true).map_err(|e| TestCaseError::fail(format!("engine and model differ: {e}")))?;
    model.check_conservation().map_err(TestCaseError::fail)?;
    prop_assert_eq!(engine.accounts(), &model.accounts()[..]);
    prop_assert_eq!(engine.transfers(), model.transfers());
    for t in model.transfers() {
        prop_assert_eq!(engine.transfer_state(t.id), model.transfer_state(t.id));
    }
    for account in model.accounts() {
        let mut filter = AccountFilter::for_account(account.id, 1000);
        let mut transfers = Vec::new();
        engine.get_account_transfers(&filter, &mut transfers).unwrap();
        let expected: Vec<Transfer> = model
            .transfers()
            .iter()
            .filter(|t| t.debit_account_id == account.id || t.credit_account_id == account.id)
            .copied()
            .collect();
        prop_assert_eq!(&transfers, &expected);
        // Debits only, newest first, limited.
        filter.flags = AccountFilterFlags(AccountFilterFlags::DEBITS.0 | AccountFilterFlags::REVERSED.0);
        filter.limit = 3;
        transfers.clear();
        engine.get_account_transfers(&filter, &mut transfers).unwrap();
        let expected: Vec<Transfer> =
            expected.iter().rev().filter(|t| t.debit_account_id == account.id).take(3).copied().collect();
        prop_assert_eq!(&transfers, &expected);
        let mut balances = Vec::new();
        engine.get_account_balances(&AccountFilter::for_account(account.id, 1000), &mut balances).unwrap();
        prop_assert_eq!(&balances[..], model.history(account.id));
    }
    if let Err(violation) = engine.check_invariants() {
        return Err(TestCaseError::fail(format!("invariant: {violation}")));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Every result, balance, record, state and query agrees with the model;
    /// debits equal credits per ledger after any batch.
    #[test]
    fn engine_agrees_with_reference_model(
        commands in prop::collection::vec(command_strategy(), 1..40),
        stride in 1u32..4,
        offset in 0u32..4,
    ) {
        // One shard's engine of `stride` (its timestamps are its residue).
        let config = Config { timestamp_stride: stride, timestamp_offset: offset % stride, ..config() };
        let mut engine = Engine::new(config.clone()).unwrap();
        let mut model = Model::new(config.clone());
        for command in &commands {
            step(&mut engine, &mut model, command)?;
        }
    }

    /// A snapshot round trip (export, import) gives an engine that answers
    /// every later command exactly like the original.
    #[test]
    fn export_import_round_trips(
        before in prop::collection::vec(command_strategy(), 1..25),
        after in prop::collection::vec(command_strategy(), 1..15),
    ) {
        let config = config();
        let mut original = Engine::new(config.clone()).unwrap();
        let mut model = Model::new(config.clone());
        for command in &before {
            step(&mut original, &mut model, command)?;
        }
        let mut restored = Engine::import(config.clone(), original.export()).unwrap();
        prop_assert_eq!(restored.export(), original.export());
        let mut model_copy = model.clone();
        for command in &after {
            step(&mut original, &mut model, command)?;
            step(&mut restored, &mut model_copy, command)?;
        }
        prop_assert_eq!(restored.export(), original.export());
    }

    /// The same commands give the same state and results; replaying an
    /// applied prefix of transfer batches again changes nothing (every event
    /// answers `exists` or a rejection, and no balance moves).
    #[test]
    fn replay_is_deterministic_and_idempotent(commands in prop::collection::vec(command_strategy(), 1..30)) {
        let run = |commands: &[Command]| {
            let mut engine = Engine::new(config()).unwrap();
            let mut all = Vec::new();
            for command in commands {
                match command {
                    Command::Accounts(b) => {
                        let mut r = Vec::new();
                        engine.create_accounts(b, &mut r).unwrap();
                        all.extend(r.iter().map(|r| *r as u32));
                    }
                    Command::Transfers(b) => {
                        let mut r = Vec::new();
                        engine.create_transfers(b, &mut r).unwrap();
                        all.extend(r.iter().map(|r| *r as u32 + 1000));
                    }
                    Command::Tick(advance) => {
                        let now = engine.clock_ns().saturating_add(*advance);
                        engine.tick(now, &mut Vec::new());
                    }
                }
            }
            (engine, all)
        };
        let (mut first, results_first) = run(&commands);
        let (second, results_second) = run(&commands);
        prop_assert_eq!(results_first, results_second);
        prop_assert_eq!(first.accounts(), second.accounts());
        prop_assert_eq!(first.transfers(), second.transfers());

        // Replay every transfer event that applied, one at a time, as a client
        // retry would: each must answer `exists` and change nothing.
        let applied: Vec<Transfer> = first.transfers().to_vec();
        let accounts_before = first.accounts().to_vec();
        for t in &applied {
            let mut retry = Transfer { timestamp: 0, ..*t };
            retry.flags.0 &= !TF::LINKED.0;
            if t.flags.intersects(TF::BALANCING_DEBIT | TF::BALANCING_CREDIT) {
                retry.amount = u128::MAX;
            }
            let mut r = Vec::new();
            first.create_transfers(&[retry], &mut r).unwrap();
            if t.flags.contains(TF::LINKED) {
                prop_assert_eq!(r[0], TR::ExistsWithDifferentFlags);
            } else {
                prop_assert_eq!(r[0], TR::Exists);
            }
        }
        prop_assert_eq!(first.accounts(), &accounts_before[..]);
        prop_assert_eq!(first.transfers(), &applied[..]);
    }
}

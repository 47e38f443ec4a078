//! One row per result code: each table runs its rows in order against one
//! engine and checks the exact code. After every rejected row, the engine's
//! state must be exactly as before (nothing half-applied).

use molly_engine::{
    Account, AccountFlags as AF, Config, CreateAccountResult as AR, CreateTransferResult as TR, Engine,
    Transfer, TransferFlags as TF, TransferState,
};

const ETH: u32 = 1;
const USDT: u32 = 2;

fn account(id: u128, ledger: u32, flags: AF) -> Account {
    Account { id, ledger, code: 1, flags, ..Account::default() }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: ETH,
        code: 1,
        ..Transfer::default()
    }
}

fn pending(id: u128, debit: u128, credit: u128, amount: u128, timeout: u32) -> Transfer {
    Transfer { flags: TF::PENDING, timeout, ..transfer(id, debit, credit, amount) }
}

fn post(id: u128, pending_id: u128, amount: u128) -> Transfer {
    Transfer { id, pending_id, amount, flags: TF::POST_PENDING, ledger: 0, code: 0, ..Transfer::default() }
}

fn void(id: u128, pending_id: u128) -> Transfer {
    Transfer { flags: TF::VOID_PENDING, ..post(id, pending_id, 0) }
}

fn snapshot(engine: &Engine) -> (Vec<Account>, Vec<Transfer>) {
    (engine.accounts().to_vec(), engine.transfers().to_vec())
}

fn run_accounts(engine: &mut Engine, rows: &[(Account, AR)]) {
    for (i, (event, expected)) in rows.iter().enumerate() {
        let before = snapshot(engine);
        let mut results = Vec::new();
        engine.create_accounts(&[*event], &mut results).unwrap();
        assert_eq!(results, [*expected], "row {i}: {event:?}");
        if !expected.is_ok() {
            assert_eq!(snapshot(engine), before, "row {i} changed state");
        }
        engine.check_invariants().unwrap();
    }
}

fn run_transfers(engine: &mut Engine, rows: &[(Transfer, TR)]) {
    for (i, (event, expected)) in rows.iter().enumerate() {
        let before = snapshot(engine);
        let mut results = Vec::new();
        engine.create_transfers(&[*event], &mut results).unwrap();
        assert_eq!(results, [*expected], "row {i}: {event:?}");
        if !expected.is_ok() {
            assert_eq!(snapshot(engine), before, "row {i} changed state");
        }
        engine.check_invariants().unwrap();
    }
}

fn engine() -> Engine {
    Engine::new(Config::default()).unwrap()
}

fn engine_with_accounts(accounts: &[Account]) -> Engine {
    let mut engine = engine();
    let mut results = Vec::new();
    engine.create_accounts(accounts, &mut results).unwrap();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    engine
}

fn balances(engine: &Engine, id: u128) -> [u128; 4] {
    let mut out = Vec::new();
    engine.lookup_accounts(&[id], &mut out).unwrap();
    let a = out[0];
    [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]
}

#[test]
fn create_account_result_codes() {
    let mut engine = Engine::new(Config { accounts_max: 3, ..Config::default() }).unwrap();
    let base = account(1, ETH, AF::NONE);
    run_accounts(
        &mut engine,
        &[
            (Account { timestamp: 1, ..base }, AR::TimestampMustBeZero),
            (Account { reserved: 1, ..base }, AR::ReservedField),
            (Account { flags: AF(1 << 9), ..base }, AR::ReservedFlag),
            (Account { id: 0, ..base }, AR::IdMustNotBeZero),
            (Account { id: u128::MAX, ..base }, AR::IdMustNotBeIntMax),
            (
                Account {
                    flags: AF::DEBITS_MUST_NOT_EXCEED_CREDITS | AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
                    ..base
                },
                AR::FlagsAreMutuallyExclusive,
            ),
            (Account { debits_pending: 1, ..base }, AR::DebitsPendingMustBeZero),
            (Account { debits_posted: 1, ..base }, AR::DebitsPostedMustBeZero),
            (Account { credits_pending: 1, ..base }, AR::CreditsPendingMustBeZero),
            (Account { credits_posted: 1, ..base }, AR::CreditsPostedMustBeZero),
            (Account { ledger: 0, ..base }, AR::LedgerMustNotBeZero),
            (Account { code: 0, ..base }, AR::CodeMustNotBeZero),
            (Account { ledger: 4242, ..base }, AR::LedgerNotRegistered),
            (base, AR::Ok),
            (base, AR::Exists),
            (Account { flags: AF::HISTORY, ..base }, AR::ExistsWithDifferentFlags),
            (Account { user_data_128: 9, ..base }, AR::ExistsWithDifferentUserData128),
            (Account { user_data_64: 9, ..base }, AR::ExistsWithDifferentUserData64),
            (Account { user_data_32: 9, ..base }, AR::ExistsWithDifferentUserData32),
            (Account { ledger: USDT, ..base }, AR::ExistsWithDifferentLedger),
            (Account { code: 2, ..base }, AR::ExistsWithDifferentCode),
            (account(2, ETH, AF::NONE), AR::Ok),
            (account(3, USDT, AF::NONE), AR::Ok),
            (account(4, ETH, AF::NONE), AR::AccountsLimitReached),
            // A retry still answers `exists` at the limit.
            (account(3, USDT, AF::NONE), AR::Exists),
        ],
    );
    let mut found = Vec::new();
    engine.lookup_accounts(&[1, 2, 3, 4], &mut found).unwrap();
    assert_eq!(found.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(found.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
}

#[test]
fn linked_account_chains_apply_all_or_nothing() {
    let mut engine = engine();
    let linked = |id| account(id, ETH, AF::LINKED);
    let mut results = Vec::new();
    engine
        .create_accounts(
            &[
                linked(1),
                linked(2),
                account(3, 0, AF::NONE), // fails: the chain 1-2-3 applies nothing
                account(4, ETH, AF::NONE),
                linked(5),
                account(6, ETH, AF::NONE),
                linked(7), // the batch ends inside a chain
            ],
            &mut results,
        )
        .unwrap();
    assert_eq!(
        results,
        [
            AR::LinkedEventFailed,
            AR::LinkedEventFailed,
            AR::LedgerMustNotBeZero,
            AR::Ok,
            AR::Ok,
            AR::Ok,
            AR::LinkedEventChainOpen,
        ]
    );
    let mut found = Vec::new();
    engine.lookup_accounts(&[1, 2, 3, 4, 5, 6, 7], &mut found).unwrap();
    assert_eq!(found.iter().map(|a| a.id).collect::<Vec<_>>(), [4, 5, 6]);
    engine.check_invariants().unwrap();
}

#[test]
fn create_transfer_validation_codes() {
    let mut engine = engine_with_accounts(&[
        account(1, ETH, AF::NONE),
        account(2, ETH, AF::NONE),
        account(3, USDT, AF::NONE),
        account(4, USDT, AF::NONE),
    ]);
    let base = transfer(100, 1, 2, 10);
    run_transfers(
        &mut engine,
        &[
            (Transfer { timestamp: 1, ..base }, TR::TimestampMustBeZero),
            (Transfer { flags: TF(1 << 10), ..base }, TR::ReservedFlag),
            (Transfer { id: 0, ..base }, TR::IdMustNotBeZero),
            (Transfer { id: u128::MAX, ..base }, TR::IdMustNotBeIntMax),
            (Transfer { flags: TF::PENDING | TF::POST_PENDING, ..base }, TR::FlagsAreMutuallyExclusive),
            (Transfer { flags: TF::POST_PENDING | TF::VOID_PENDING, ..base }, TR::FlagsAreMutuallyExclusive),
            (
                Transfer { flags: TF::VOID_PENDING | TF::BALANCING_DEBIT, ..base },
                TR::FlagsAreMutuallyExclusive,
            ),
            (
                Transfer { flags: TF::POST_PENDING | TF::CLOSING_CREDIT, ..base },
                TR::FlagsAreMutuallyExclusive,
            ),
            (Transfer { debit_account_id: 0, ..base }, TR::DebitAccountIdMustNotBeZero),
            (Transfer { debit_account_id: u128::MAX, ..base }, TR::DebitAccountIdMustNotBeIntMax),
            (Transfer { credit_account_id: 0, ..base }, TR::CreditAccountIdMustNotBeZero),
            (Transfer { credit_account_id: u128::MAX, ..base }, TR::CreditAccountIdMustNotBeIntMax),
            (Transfer { credit_account_id: 1, ..base }, TR::AccountsMustBeDifferent),
            (Transfer { pending_id: 7, ..base }, TR::PendingIdMustBeZero),
            (Transfer { timeout: 5, ..base }, TR::TimeoutReservedForPendingTransfer),
            (Transfer { flags: TF::CLOSING_DEBIT, ..base }, TR::ClosingTransferMustBePending),
            (Transfer { amount: 0, ..base }, TR::AmountMustNotBeZero),
            (Transfer { ledger: 0, ..base }, TR::LedgerMustNotBeZero),
            (Transfer { code: 0, ..base }, TR::CodeMustNotBeZero),
            (Transfer { debit_account_id: 99, ..base }, TR::DebitAccountNotFound),
            (Transfer { credit_account_id: 99, ..base }, TR::CreditAccountNotFound),
            (Transfer { credit_account_id: 3, ..base }, TR::AccountsMustHaveTheSameLedger),
            (Transfer { ledger: USDT, ..base }, TR::TransferMustHaveTheSameLedgerAsAccounts),
            (
                Transfer { debit_account_id: 3, credit_account_id: 4, ..base },
                TR::TransferMustHaveTheSameLedgerAsAccounts,
            ),
        ],
    );
    assert!(engine.transfers().is_empty());
}

#[test]
fn exists_codes_make_retries_safe() {
    let mut engine = engine_with_accounts(&[
        account(1, ETH, AF::NONE),
        account(2, ETH, AF::NONE),
        account(3, ETH, AF::NONE),
    ]);
    let base = Transfer { user_data_128: 5, user_data_64: 6, user_data_32: 7, ..transfer(100, 1, 2, 10) };
    let held = pending(200, 1, 2, 50, 60);
    run_transfers(
        &mut engine,
        &[
            (base, TR::Ok),
            (base, TR::Exists),
            (Transfer { flags: TF::PENDING, ..base }, TR::ExistsWithDifferentFlags),
            (Transfer { debit_account_id: 3, ..base }, TR::ExistsWithDifferentDebitAccountId),
            (Transfer { credit_account_id: 3, ..base }, TR::ExistsWithDifferentCreditAccountId),
            (Transfer { amount: 11, ..base }, TR::ExistsWithDifferentAmount),
            (Transfer { user_data_128: 0, ..base }, TR::ExistsWithDifferentUserData128),
            (Transfer { user_data_64: 0, ..base }, TR::ExistsWithDifferentUserData64),
            (Transfer { user_data_32: 0, ..base }, TR::ExistsWithDifferentUserData32),
            (Transfer { ledger: USDT, ..base }, TR::ExistsWithDifferentLedger),
            (Transfer { code: 9, ..base }, TR::ExistsWithDifferentCode),
            (held, TR::Ok),
            (Transfer { timeout: 61, ..held }, TR::ExistsWithDifferentTimeout),
            (post(201, 200, 0), TR::Ok),
            // A retried post that names a different pending transfer.
            (post(201, 100, 0), TR::ExistsWithDifferentPendingId),
            // A retried post that omits what it inherited is the same post.
            (post(201, 200, 0), TR::Exists),
            (post(201, 200, 50), TR::Exists),
            (post(201, 200, 49), TR::ExistsWithDifferentAmount),
        ],
    );
    // Retries changed nothing: 10 + 50 moved once each.
    assert_eq!(balances(&engine, 1), [0, 60, 0, 0]);
    assert_eq!(balances(&engine, 2), [0, 0, 0, 60]);
}

/// A pending transfer with a timeout created in a linked chain that fails
/// leaves its expiry time behind; a pending transfer without a timeout that
/// later takes the same slot at exactly that nanosecond must not expire.
/// (Found by `molly sim --net --seed 168`: the simulator's clock lands on
/// expiry times.)
#[test]
fn a_failed_chains_expiry_never_expires_a_later_transfer() {
    let mut engine = engine_with_accounts(&[account(1, ETH, AF::NONE), account(2, ETH, AF::NONE)]);
    let mut expired = Vec::new();
    engine.tick(1_000_000_000, &mut expired);
    let held = Transfer { flags: TF(TF::PENDING.0 | TF::LINKED.0), ..pending(1, 1, 2, 5, 1) };
    let mut results = Vec::new();
    engine.create_transfers(&[held, transfer(2, 1, 9, 5)], &mut results).unwrap();
    assert_eq!(results, [TR::LinkedEventFailed, TR::CreditAccountNotFound]);
    // The failed chain's pending transfer would have had timestamp T and
    // expired at T + 1 s; the next transfer takes its slot at T + 1 s.
    let expiry = engine.next_expiry_ns().expect("the undone transfer's entry is still queued");
    engine.tick(expiry - 1, &mut expired);
    run_transfers(&mut engine, &[(pending(3, 1, 2, 7, 0), TR::Ok)]);
    let hold = engine.transfers().iter().find(|t| t.id == 3).unwrap();
    assert_eq!(hold.timestamp, expiry, "the hold was stamped at the stale entry's time");
    engine.tick(expiry, &mut expired);
    engine.tick(expiry + 10_000_000_000, &mut expired);
    assert!(expired.is_empty(), "{expired:?}");
    assert_eq!(engine.transfer_state(3), Some(TransferState::Pending), "no timeout: it never expires");
    assert_eq!(balances(&engine, 1), [7, 0, 0, 0]);
}

#[test]
fn two_phase_codes() {
    let mut engine = engine_with_accounts(&[
        account(1, ETH, AF::NONE),
        account(2, ETH, AF::NONE),
        account(3, ETH, AF::NONE),
    ]);
    run_transfers(
        &mut engine,
        &[
            (transfer(1, 1, 2, 10), TR::Ok),
            (pending(10, 1, 2, 100, 0), TR::Ok),
            (post(11, 0, 0), TR::PendingIdMustNotBeZero),
            (post(11, u128::MAX, 0), TR::PendingIdMustNotBeIntMax),
            (post(11, 11, 0), TR::PendingIdMustBeDifferent),
            (Transfer { timeout: 1, ..post(11, 10, 0) }, TR::TimeoutReservedForPendingTransfer),
            (post(11, 12, 0), TR::PendingTransferNotFound),
            (post(11, 1, 0), TR::PendingTransferNotPending),
            (
                Transfer { debit_account_id: 3, ..post(11, 10, 0) },
                TR::PendingTransferHasDifferentDebitAccountId,
            ),
            (
                Transfer { credit_account_id: 3, ..post(11, 10, 0) },
                TR::PendingTransferHasDifferentCreditAccountId,
            ),
            (Transfer { ledger: USDT, ..post(11, 10, 0) }, TR::PendingTransferHasDifferentLedger),
            (Transfer { code: 2, ..post(11, 10, 0) }, TR::PendingTransferHasDifferentCode),
            (post(11, 10, 101), TR::AmountExceedsPending),
            (Transfer { amount: 99, ..void(11, 10) }, TR::PendingTransferHasDifferentAmount),
            // A partial post: 60 moves, the other 40 is released.
            (post(11, 10, 60), TR::Ok),
            (post(12, 10, 0), TR::PendingTransferAlreadyPosted),
            (void(12, 10), TR::PendingTransferAlreadyPosted),
            (pending(20, 1, 2, 30, 0), TR::Ok),
            (void(21, 20), TR::Ok),
            (post(22, 20, 0), TR::PendingTransferAlreadyVoided),
            (pending(30, 1, 2, 7, 10), TR::Ok),
        ],
    );
    assert_eq!(balances(&engine, 1), [7, 70, 0, 0]);
    assert_eq!(balances(&engine, 2), [0, 0, 7, 70]);
    assert_eq!(engine.transfer_state(10), Some(TransferState::Posted));
    assert_eq!(engine.transfer_state(20), Some(TransferState::Voided));

    // Expiry follows logical time only: 10 s after the transfer's timestamp.
    let created = engine.transfers().iter().find(|t| t.id == 30).unwrap().timestamp;
    let mut expired = Vec::new();
    engine.tick(created + 10_000_000_000 - 1, &mut expired);
    assert!(expired.is_empty());
    assert_eq!(engine.transfer_state(30), Some(TransferState::Pending));
    engine.tick(created + 10_000_000_000, &mut expired);
    assert_eq!(expired, [30]);
    assert_eq!(engine.transfer_state(30), Some(TransferState::Expired));
    assert_eq!(balances(&engine, 1), [0, 70, 0, 0]);
    run_transfers(
        &mut engine,
        &[(post(31, 30, 0), TR::PendingTransferExpired), (void(31, 30), TR::PendingTransferExpired)],
    );
}

#[test]
fn balance_limit_codes() {
    let mut engine = engine_with_accounts(&[
        account(1, ETH, AF::NONE),
        account(2, ETH, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(3, ETH, AF::CREDITS_MUST_NOT_EXCEED_DEBITS),
    ]);
    run_transfers(
        &mut engine,
        &[
            (transfer(1, 2, 1, 1), TR::ExceedsCredits),
            (transfer(2, 1, 3, 1), TR::ExceedsDebits),
            (transfer(3, 1, 2, 100), TR::Ok),
            (pending(4, 2, 1, 60, 0), TR::Ok),
            // 60 is reserved: only 40 is left to spend.
            (transfer(5, 2, 1, 41), TR::ExceedsCredits),
            (transfer(6, 2, 1, 40), TR::Ok),
            (void(7, 4), TR::Ok),
            (transfer(8, 3, 1, 5), TR::Ok),
            (transfer(9, 1, 3, 6), TR::ExceedsDebits),
            (transfer(10, 1, 3, 5), TR::Ok),
        ],
    );
    assert_eq!(balances(&engine, 2), [0, 40, 0, 100]);
}

#[test]
fn balancing_transfers_clamp_to_what_is_available() {
    let mut engine = engine_with_accounts(&[
        account(1, ETH, AF::NONE),
        account(2, ETH, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(3, ETH, AF::NONE),
    ]);
    run_transfers(
        &mut engine,
        &[
            (transfer(1, 1, 2, 75), TR::Ok),
            // Sweep "everything" from 2 to 3: clamped to 75.
            (Transfer { flags: TF::BALANCING_DEBIT, ..transfer(2, 2, 3, u128::MAX) }, TR::Ok),
            // Nothing left: a zero-amount balancing transfer is recorded.
            (Transfer { flags: TF::BALANCING_DEBIT, ..transfer(3, 2, 3, 10) }, TR::Ok),
            // Balancing credit: 3 may receive only up to its debits (0 - 75 -> 0).
            (Transfer { flags: TF::BALANCING_CREDIT, ..transfer(4, 1, 3, 5) }, TR::Ok),
            (Transfer { flags: TF::BALANCING_DEBIT, ..transfer(2, 2, 3, u128::MAX) }, TR::Exists),
            (Transfer { flags: TF::BALANCING_DEBIT, ..transfer(2, 2, 3, 74) }, TR::ExistsWithDifferentAmount),
        ],
    );
    let mut found = Vec::new();
    engine.lookup_transfers(&[2, 3, 4], &mut found).unwrap();
    assert_eq!(found.iter().map(|t| t.amount).collect::<Vec<_>>(), [75, 0, 0]);
    assert_eq!(balances(&engine, 3), [0, 0, 0, 75]);
}

#[test]
fn closing_codes_and_reopening() {
    let mut engine = engine_with_accounts(&[account(1, ETH, AF::NONE), account(2, ETH, AF::NONE)]);
    run_transfers(
        &mut engine,
        &[
            (Transfer { flags: TF::PENDING | TF::CLOSING_DEBIT, ..transfer(1, 1, 2, 1) }, TR::Ok),
            (transfer(2, 1, 2, 1), TR::DebitAccountAlreadyClosed),
            (transfer(3, 2, 1, 1), TR::CreditAccountAlreadyClosed),
            // Voiding the closing transfer reopens the account.
            (void(4, 1), TR::Ok),
            (transfer(5, 1, 2, 1), TR::Ok),
            (Transfer { flags: TF::PENDING | TF::CLOSING_CREDIT, ..transfer(6, 1, 2, 1) }, TR::Ok),
            (post(7, 6, 0), TR::Ok),
            (transfer(8, 1, 2, 1), TR::CreditAccountAlreadyClosed),
        ],
    );
    // Re-sending the account's creation still answers `exists` once closed.
    run_accounts(&mut engine, &[(account(2, ETH, AF::NONE), AR::Exists)]);
}

#[test]
fn overflow_codes() {
    let max = u128::MAX;
    let mut engine =
        engine_with_accounts(&(10..=18).map(|id| account(id, ETH, AF::NONE)).collect::<Vec<_>>());
    run_transfers(
        &mut engine,
        &[
            (pending(1, 10, 11, max, 0), TR::Ok),
            (pending(2, 10, 12, 1, 0), TR::OverflowsDebitsPending),
            (pending(3, 12, 11, 1, 0), TR::OverflowsCreditsPending),
            (transfer(4, 10, 12, 1), TR::OverflowsDebits),
            (transfer(5, 13, 14, max), TR::Ok),
            (transfer(6, 13, 15, 1), TR::OverflowsDebitsPosted),
            (transfer(7, 15, 14, 1), TR::OverflowsCreditsPosted),
            (pending(8, 16, 17, max, 0), TR::Ok),
            (transfer(9, 18, 17, 1), TR::OverflowsCredits),
        ],
    );

    let mut engine = engine_with_accounts(&[account(1, ETH, AF::NONE), account(2, ETH, AF::NONE)]);
    // Time is clamped at CLOCK_NS_MAX, 2^40 ns (~1,100 s) short of u64::MAX.
    engine.tick(u64::MAX, &mut Vec::new());
    assert_eq!(engine.clock_ns(), molly_engine::CLOCK_NS_MAX);
    run_transfers(
        &mut engine,
        &[(pending(1, 1, 2, 1, 1100), TR::OverflowsTimeout), (pending(2, 1, 2, 1, 1000), TR::Ok)],
    );
}

#[test]
fn transfers_limit_code() {
    let mut engine = Engine::new(Config { transfers_max: 2, ..Config::default() }).unwrap();
    let mut results = Vec::new();
    engine.create_accounts(&[account(1, ETH, AF::NONE), account(2, ETH, AF::NONE)], &mut results).unwrap();
    run_transfers(
        &mut engine,
        &[
            (transfer(1, 1, 2, 1), TR::Ok),
            (pending(2, 1, 2, 1, 0), TR::Ok),
            (transfer(3, 1, 2, 1), TR::TransfersLimitReached),
            (post(4, 2, 0), TR::TransfersLimitReached),
            (transfer(1, 1, 2, 1), TR::Exists),
        ],
    );
}

#[test]
fn linked_transfer_chains_apply_all_or_nothing() {
    let mut engine = engine_with_accounts(&[
        account(1, ETH, AF::NONE),
        account(2, ETH, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
        account(3, ETH, AF::HISTORY),
    ]);
    let linked = |t: Transfer| Transfer { flags: t.flags | TF::LINKED, ..t };
    let mut results = Vec::new();
    engine
        .create_transfers(
            &[
                transfer(1, 1, 2, 100),
                // Chain A: fund 2 → 3, reserve, post, then overspend: all undone.
                linked(transfer(2, 2, 3, 50)),
                linked(pending(3, 2, 3, 20, 0)),
                linked(post(4, 3, 0)),
                transfer(5, 2, 3, 31),
                // Chain B succeeds.
                linked(transfer(6, 2, 3, 10)),
                transfer(7, 3, 1, 10),
                // An open chain at the end of the batch.
                linked(transfer(8, 1, 3, 1)),
            ],
            &mut results,
        )
        .unwrap();
    assert_eq!(
        results,
        [
            TR::Ok,
            TR::LinkedEventFailed,
            TR::LinkedEventFailed,
            TR::LinkedEventFailed,
            TR::ExceedsCredits,
            TR::Ok,
            TR::Ok,
            TR::LinkedEventChainOpen,
        ]
    );
    let mut found = Vec::new();
    engine.lookup_transfers(&[1, 2, 3, 4, 5, 6, 7, 8], &mut found).unwrap();
    assert_eq!(found.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 6, 7]);
    assert_eq!(balances(&engine, 2), [0, 10, 0, 100]);
    assert_eq!(balances(&engine, 3), [0, 10, 0, 10]);
    assert_eq!(engine.transfer_state(3), None);
    // The undone chain left no history behind.
    let mut history = Vec::new();
    engine.get_account_balances(&molly_engine::AccountFilter::for_account(3, 100), &mut history).unwrap();
    assert_eq!(history.len(), 2);
    // A failing event after a successful chain does not undo the chain.
    let mut results = Vec::new();
    engine
        .create_transfers(
            &[linked(transfer(9, 1, 3, 1)), transfer(10, 1, 3, 1), transfer(10, 1, 3, 2)],
            &mut results,
        )
        .unwrap();
    assert_eq!(results, [TR::Ok, TR::Ok, TR::ExistsWithDifferentAmount]);
    engine.check_invariants().unwrap();
}

#[test]
fn batches_over_the_limit_apply_nothing() {
    let mut engine = Engine::new(Config { batch_events_max: 2, ..Config::default() }).unwrap();
    let mut results = Vec::new();
    let err = engine
        .create_accounts(
            &[account(1, ETH, AF::NONE), account(2, ETH, AF::NONE), account(3, ETH, AF::NONE)],
            &mut results,
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "batch of 3 events exceeds the maximum of 2");
    assert!(engine.accounts().is_empty());
    assert!(engine.lookup_accounts(&[1, 2, 3], &mut Vec::new()).is_err());
}

#[test]
fn import_refuses_inconsistent_states() {
    let mut engine = engine_with_accounts(&[account(1, ETH, AF::NONE), account(2, ETH, AF::NONE)]);
    run_transfers(&mut engine, &[(transfer(1, 1, 2, 10), TR::Ok), (pending(2, 1, 2, 5, 0), TR::Ok)]);
    let good = engine.export();
    assert!(Engine::import(Config::default(), good.clone()).is_ok());
    // A balance changed behind the journal's back: debits no longer equal credits.
    let mut bad = good.clone();
    bad.accounts[0].debits_posted += 1;
    assert!(matches!(Engine::import(Config::default(), bad), Err(molly_engine::ImportError::Invariant(_))));
    // A transfer naming a missing account.
    let mut bad = good.clone();
    bad.transfers[0].credit_account_id = 99;
    assert!(matches!(Engine::import(Config::default(), bad), Err(molly_engine::ImportError::Malformed(_))));
    // A plain transfer marked pending; a duplicate id; limits.
    let mut bad = good.clone();
    bad.transfer_states[0] = 1;
    assert!(Engine::import(Config::default(), bad).is_err());
    let mut bad = good.clone();
    bad.transfers[1].id = 1;
    assert!(Engine::import(Config::default(), bad).is_err());
    assert_eq!(
        Engine::import(Config { transfers_max: 1, ..Config::default() }, good).unwrap_err(),
        molly_engine::ImportError::OverLimits
    );
}

/// Codes a single engine never assigns: the shard router gives them to a
/// linked chain whose events live on different shards. Their behaviour is
/// tested with a live server in `tests/protocol.rs`
/// (`linked_chains_across_shards_are_rejected_whole_and_post_finds_its_pending`); here, that one engine
/// accepts the same chain (the code is the router's, never an engine's).
#[test]
fn router_codes_are_never_the_engines() {
    let routed = [AR::LinkedEventChainCrossShard];
    let routed_transfers = [TR::LinkedEventChainCrossShard];
    let mut engine = Engine::new(Config::default()).unwrap();
    let mut results = Vec::new();
    let chain = [account(1, ETH, AF::LINKED), account(2, ETH, AF::NONE)];
    engine.create_accounts(&chain, &mut results).unwrap();
    assert!(results.iter().all(|r| !routed.contains(r)), "{results:?}");
    assert!(results.iter().all(|r| r.is_ok()));
    let mut results = Vec::new();
    let mut first = transfer(1, 1, 2, 10);
    first.flags = TF::LINKED;
    engine.create_transfers(&[first, transfer(2, 2, 1, 5)], &mut results).unwrap();
    assert!(results.iter().all(|r| !routed_transfers.contains(r) && r.is_ok()), "{results:?}");
}

/// Every result code has a row in the tables above (a new code without a
/// test fails here).
#[test]
fn every_result_code_has_a_table_row() {
    let source = include_str!("result_codes.rs");
    let untested: Vec<String> = TR::ALL
        .iter()
        .map(|code| format!("TR::{code:?}"))
        .chain(AR::ALL.iter().map(|code| format!("AR::{code:?}")))
        .filter(|needle| source.matches(needle.as_str()).count() < 1)
        .collect();
    assert!(untested.is_empty(), "result codes without a test row: {untested:?}");
}

/// Codes the shard layer returns (the engine never does): their table rows
/// are in `shards/tests/cross_shard.rs` (`the_scripted_batches_give_every_documented_code`
/// and the runtime tests), which this test reads.
#[test]
fn shard_layer_codes_have_rows_in_the_shards_tests() {
    let shards_tests = concat!(
        include_str!("../../shards/tests/cross_shard.rs"),
        include_str!("../../shards/tests/runtime.rs")
    );
    let shard_layer = [
        "TR::IdMustNotBeReserved",
        "TR::DebitAccountIdMustNotBeReserved",
        "TR::CreditAccountIdMustNotBeReserved",
        "TR::LinkedEventChainCrossShard",
        "TR::CrossShardFlagsNotSupported",
        "AR::IdMustNotBeReserved",
    ];
    for code in shard_layer {
        let name = code.split("::").nth(1).unwrap();
        assert!(shards_tests.contains(name), "{code} has no row in the shards tests");
    }
}

/// Engines that share a ledger (the shards) never give the same timestamp:
/// each gives only its residue modulo the stride, and a bad residue is a
/// configuration error.
#[test]
fn strided_engines_give_disjoint_increasing_timestamps() {
    let mut seen = std::collections::HashSet::new();
    for offset in 0..3 {
        let config = Config { timestamp_stride: 3, timestamp_offset: offset, ..Config::default() };
        let mut engine = Engine::new(config).unwrap();
        let mut results = Vec::new();
        engine
            .create_accounts(&[account(1, ETH, AF::NONE), account(2, ETH, AF::NONE)], &mut results)
            .unwrap();
        assert!(results.iter().all(|r| *r == AR::Ok), "{results:?}");
        engine.tick(1_000 + u64::from(offset), &mut Vec::new());
        let transfers: Vec<Transfer> = (10..20).map(|id| transfer(id, 1, 2, 5)).collect();
        let mut results = Vec::new();
        engine.create_transfers(&transfers, &mut results).unwrap();
        assert!(results.iter().all(|r| *r == TR::Ok), "{results:?}");
        let mut accounts = Vec::new();
        engine.lookup_accounts(&[1, 2], &mut accounts).unwrap();
        let mut found = Vec::new();
        engine.lookup_transfers(&(10..20).collect::<Vec<u128>>(), &mut found).unwrap();
        let mut stamps: Vec<u64> = accounts.iter().map(|a| a.timestamp).collect();
        stamps.extend(found.iter().map(|t| t.timestamp));
        assert_eq!(stamps.len(), 12);
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "increasing: {stamps:?}");
        assert!(stamps[2] > 1_000, "after the clock: {stamps:?}");
        for stamp in stamps {
            assert_eq!(stamp % 3, u64::from(offset));
            assert!(seen.insert(stamp), "timestamp {stamp} given twice");
        }
    }
    let bad = Config { timestamp_stride: 2, timestamp_offset: 2, ..Config::default() };
    assert_eq!(
        Engine::new(bad).unwrap_err(),
        molly_engine::ConfigError::TimestampOffset { offset: 2, stride: 2 }
    );
    let zero = Config { timestamp_stride: 0, ..Config::default() };
    assert_eq!(Engine::new(zero).unwrap_err(), molly_engine::ConfigError::Zero("timestamp_stride"));
}

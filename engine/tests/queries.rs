//! Lookups and account history: ranges, paging, filters, and clear errors
//! for bad filters.

use molly_engine::{
    Account, AccountFilter, AccountFilterFlags as FF, AccountFlags as AF, Config, Engine, QueryError,
    Transfer, TransferFlags as TF,
};

fn setup() -> Engine {
    let mut engine = Engine::new(Config { query_results_max: 5, ..Config::default() }).unwrap();
    let account = |id, flags| Account { id, ledger: 1, code: 1, flags, ..Account::default() };
    let mut results = Vec::new();
    engine
        .create_accounts(&[account(1, AF::HISTORY), account(2, AF::NONE), account(3, AF::NONE)], &mut results)
        .unwrap();
    // Transfers 1..=8 alternate direction between 1 and 2; 9 is 2 → 3.
    let transfers: Vec<Transfer> = (1..=9u128)
        .map(|id| {
            let (debit, credit) = match id {
                9 => (2, 3),
                _ if id % 2 == 1 => (1, 2),
                _ => (2, 1),
            };
            Transfer {
                id,
                debit_account_id: debit,
                credit_account_id: credit,
                amount: id * 10,
                ledger: 1,
                code: if id <= 4 { 1 } else { 2 },
                user_data_64: (id % 3) as u64,
                ..Transfer::default()
            }
        })
        .collect();
    engine.create_transfers(&transfers, &mut Vec::new()).unwrap();
    engine
}

fn ids(transfers: &[Transfer]) -> Vec<u128> {
    transfers.iter().map(|t| t.id).collect()
}

fn query(engine: &Engine, filter: AccountFilter) -> Vec<u128> {
    let mut out = Vec::new();
    engine.get_account_transfers(&filter, &mut out).unwrap();
    ids(&out)
}

#[test]
fn account_transfers_by_side_order_and_limit() {
    let engine = setup();
    let both = AccountFilter::for_account(1, 100);
    // The engine caps results at query_results_max (5).
    assert_eq!(query(&engine, both), [1, 2, 3, 4, 5]);
    assert_eq!(query(&engine, AccountFilter { limit: 3, ..both }), [1, 2, 3]);
    assert_eq!(
        query(&engine, AccountFilter { flags: FF(FF::DEBITS.0 | FF::REVERSED.0), ..both }),
        [7, 5, 3, 1]
    );
    assert_eq!(query(&engine, AccountFilter { flags: FF::CREDITS, ..both }), [2, 4, 6, 8]);
    assert_eq!(query(&engine, AccountFilter { code: 2, ..both }), [5, 6, 7, 8]);
    assert_eq!(query(&engine, AccountFilter { user_data_64: 2, ..both }), [2, 5, 8]);
    assert_eq!(query(&engine, AccountFilter::for_account(3, 10)), [9]);
    // Unknown accounts have no history.
    assert_eq!(query(&engine, AccountFilter::for_account(42, 10)), Vec::<u128>::new());
}

#[test]
fn account_transfers_page_by_timestamp() {
    let engine = setup();
    let mut all = Vec::new();
    engine.lookup_transfers(&(1..=8).collect::<Vec<_>>(), &mut all).unwrap();
    let ts: Vec<u64> = all.iter().map(|t| t.timestamp).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]));
    let both = AccountFilter::for_account(1, 3);
    // Page forward: each page starts after the last timestamp seen.
    let mut pages = Vec::new();
    let mut from = 0;
    loop {
        let mut page = Vec::new();
        engine.get_account_transfers(&AccountFilter { timestamp_min: from, ..both }, &mut page).unwrap();
        if page.is_empty() {
            break;
        }
        from = page.last().unwrap().timestamp + 1;
        pages.push(ids(&page));
    }
    assert_eq!(pages, [vec![1, 2, 3], vec![4, 5, 6], vec![7, 8]]);
    // An inclusive range.
    let range = AccountFilter { timestamp_min: ts[2], timestamp_max: ts[5], limit: 100, ..both };
    assert_eq!(query(&engine, range), [3, 4, 5, 6]);
    assert_eq!(query(&engine, AccountFilter { flags: FF(FF::ALL.0), ..range }), [6, 5, 4, 3]);
}

#[test]
fn balance_history_of_history_accounts() {
    let mut engine = setup();
    let mut points = Vec::new();
    engine.get_account_balances(&AccountFilter::for_account(1, 100), &mut points).unwrap();
    assert_eq!(points.len(), 5); // capped by query_results_max
                                 // After transfer 1 (1 → 2, 10), account 1 has debits_posted 10; after 2, credits 20.
    assert_eq!((points[0].debits_posted, points[0].credits_posted), (10, 0));
    assert_eq!((points[1].debits_posted, points[1].credits_posted), (10, 20));
    // Accounts without the history flag keep none.
    points.clear();
    engine.get_account_balances(&AccountFilter::for_account(2, 100), &mut points).unwrap();
    assert!(points.is_empty());
    // Pending, then expiry, are both recorded.
    let mut results = Vec::new();
    let pending = Transfer {
        id: 100,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 7,
        ledger: 1,
        code: 1,
        flags: TF::PENDING,
        timeout: 1,
        ..Transfer::default()
    };
    engine.create_transfers(&[pending], &mut results).unwrap();
    engine.tick(engine.timestamp_last() + 2_000_000_000, &mut Vec::new());
    points.clear();
    let newest = AccountFilter { flags: FF(FF::ALL.0), limit: 2, ..AccountFilter::for_account(1, 2) };
    engine.get_account_balances(&newest, &mut points).unwrap();
    assert_eq!(points[0].debits_pending, 0);
    assert_eq!(points[1].debits_pending, 7);
    assert!(points[0].timestamp > points[1].timestamp);
}

#[test]
fn bad_filters_get_clear_errors() {
    let engine = setup();
    let good = AccountFilter::for_account(1, 10);
    let mut out = Vec::new();
    let cases = [
        (AccountFilter { account_id: 0, ..good }, QueryError::AccountIdInvalid),
        (AccountFilter { account_id: u128::MAX, ..good }, QueryError::AccountIdInvalid),
        (
            AccountFilter {
                reserved: {
                    let mut r = [0; 58];
                    r[3] = 1;
                    r
                },
                ..good
            },
            QueryError::ReservedNotZero,
        ),
        (AccountFilter { flags: FF::REVERSED, ..good }, QueryError::FlagsInvalid(4)),
        (AccountFilter { flags: FF(1 << 7 | 1), ..good }, QueryError::FlagsInvalid(129)),
        (
            AccountFilter { timestamp_min: 5, timestamp_max: 4, ..good },
            QueryError::TimestampRangeInvalid { min: 5, max: 4 },
        ),
        (AccountFilter { limit: 0, ..good }, QueryError::LimitZero),
    ];
    for (filter, expected) in cases {
        assert_eq!(engine.get_account_transfers(&filter, &mut out), Err(expected.clone()));
        assert_eq!(engine.get_account_balances(&filter, &mut Vec::new()), Err(expected));
    }
    assert!(out.is_empty());
    assert_eq!(
        QueryError::TimestampRangeInvalid { min: 5, max: 4 }.to_string(),
        "timestamp_min 5 is after timestamp_max 4"
    );
}

#[test]
fn lookups_return_found_records_in_request_order() {
    let engine = setup();
    let mut accounts = Vec::new();
    engine.lookup_accounts(&[3, 0, 99, 1], &mut accounts).unwrap();
    assert_eq!(accounts.iter().map(|a| a.id).collect::<Vec<_>>(), [3, 1]);
    let mut transfers = Vec::new();
    engine.lookup_transfers(&[9, 100, 0, 2], &mut transfers).unwrap();
    assert_eq!(ids(&transfers), [9, 2]);
    assert_eq!(transfers[0].amount, 90);
}

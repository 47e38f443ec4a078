//! A snapshot's capture into an earlier capture's buffers: the same parts
//! as a fresh capture, copied into the memory the earlier one used.

use molly_engine::{Account, Config, Engine, SnapshotParts, Transfer, TransferFlags as TF};

fn transfer(id: u128, debit: u128, credit: u128, flags: TF) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: 1,
        ledger: 1,
        code: 1,
        flags,
        ..Transfer::default()
    }
}

/// Everything but the shared blocks, comparable.
fn contents(parts: &SnapshotParts) -> (Vec<Account>, usize, usize, Vec<Transfer>, Vec<u8>, u64, u64) {
    (
        parts.accounts.clone(),
        parts.first_block,
        parts.blocks.len(),
        parts.tail.clone(),
        parts.transfer_states.clone(),
        parts.clock_ns,
        parts.timestamp_last,
    )
}

#[test]
fn a_capture_into_old_buffers_equals_a_fresh_one_and_keeps_their_memory() {
    let mut engine = Engine::new(Config::default()).unwrap();
    let accounts: Vec<Account> =
        (1..=4).map(|id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
    let mut results = Vec::new();
    engine.create_accounts(&accounts, &mut results).unwrap();
    let mut next = 100u128;
    let mut add = |engine: &mut Engine, n: usize| {
        let batch: Vec<Transfer> = (0..n)
            .map(|i| {
                next += 1;
                let flags = if i % 3 == 0 { TF::PENDING } else { TF::default() };
                transfer(next, 1 + (i as u128 % 2), 3 + (i as u128 % 2), flags)
            })
            .collect();
        let mut results = Vec::new();
        engine.create_transfers(&batch, &mut results).unwrap();
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    };
    add(&mut engine, 40);
    // The old capture, emptied of blocks as a finished snapshot hands it
    // back, with room for what comes next.
    let mut emptied = engine.snapshot_parts(0);
    emptied.blocks.clear();
    emptied.transfer_states.reserve(64);
    emptied.tail.reserve(64);
    let (states, tail) = (emptied.transfer_states.as_ptr(), emptied.tail.as_ptr());
    add(&mut engine, 30);
    let reused = engine.snapshot_parts_reusing(0, emptied);
    assert_eq!(contents(&reused), contents(&engine.snapshot_parts(0)));
    assert_eq!(reused.transfer_states.len(), 70);
    assert_eq!(reused.transfer_states.as_ptr(), states, "the states went into the old buffer");
    assert_eq!(reused.tail.as_ptr(), tail, "the tail went into the old buffer");
}

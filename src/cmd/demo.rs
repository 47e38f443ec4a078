//! `molly demo`: the in-memory engine demo (Molly's main job until the shard
//! runtime lands): open accounts, credit a deposit, pay with a fee in one
//! linked chain, reserve and post a withdrawal, show a rejected overdraft and
//! a safe retry, and print balances.

use anyhow::{ensure, Context};
use molly_engine::{
    Account, AccountCode, AccountFlags, Config, CreateTransferResult, Engine, Transfer, TransferCode,
    TransferFlags,
};

#[derive(Debug, clap::Args)]
pub struct Args {}

const CHAIN: u128 = 1;
const FEES: u128 = 2;
const ALICE: u128 = 100;
const BOB: u128 = 101;

pub fn run(_args: Args) -> anyhow::Result<()> {
    let mut engine = Engine::new(Config::default())?;
    let eth = engine.config().assets.by_symbol("ETH").context("ETH is built in")?.clone();
    let units = |text: &str| eth.parse_amount(text);

    let account = |id, code: AccountCode, flags| Account {
        id,
        ledger: eth.ledger,
        code: code as u16,
        flags,
        ..Account::default()
    };
    let user_flags = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::HISTORY;
    let mut results = Vec::new();
    engine.create_accounts(
        &[
            account(CHAIN, AccountCode::Chain, AccountFlags::NONE),
            account(FEES, AccountCode::Fees, AccountFlags::NONE),
            account(ALICE, AccountCode::User, user_flags),
            account(BOB, AccountCode::User, user_flags),
        ],
        &mut results,
    )?;
    ensure!(results.iter().all(|r| r.is_ok()), "accounts: {results:?}");
    println!("opened accounts: chain, fees, alice, bob (ledger {} = {})", eth.ledger, eth.symbol);

    let transfer = |id, debit, credit, amount, code: TransferCode| Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: eth.ledger,
        code: code as u16,
        ..Transfer::default()
    };
    let step =
        |engine: &mut Engine, what: &str, batch: &[Transfer]| -> anyhow::Result<Vec<CreateTransferResult>> {
            let mut results = Vec::new();
            engine.create_transfers(batch, &mut results)?;
            let codes: Vec<&str> = results.iter().map(|r| r.name()).collect();
            println!("{what:<58} -> {}", codes.join(", "));
            Ok(results)
        };

    step(
        &mut engine,
        "deposit 1.5 ETH to alice (confirmed on chain)",
        &[transfer(1, CHAIN, ALICE, units("1.5")?, TransferCode::Deposit)],
    )?;
    let pay = Transfer {
        flags: TransferFlags::LINKED,
        ..transfer(2, ALICE, BOB, units("0.4")?, TransferCode::Internal)
    };
    let fee = transfer(3, ALICE, FEES, units("0.001")?, TransferCode::Fee);
    step(&mut engine, "alice pays bob 0.4 ETH + 0.001 fee (one linked chain)", &[pay, fee])?;
    let hold = Transfer {
        flags: TransferFlags::PENDING,
        timeout: 3600,
        ..transfer(4, BOB, CHAIN, units("0.2")?, TransferCode::Withdrawal)
    };
    step(&mut engine, "bob withdraws 0.2 ETH: funds held (pending, 1 h)", &[hold])?;
    let post = Transfer { id: 5, pending_id: 4, flags: TransferFlags::POST_PENDING, ..Transfer::default() };
    step(&mut engine, "withdrawal broadcast and final: hold posted", &[post])?;
    let overdraft = step(
        &mut engine,
        "alice tries to send 2 ETH she does not have",
        &[transfer(6, ALICE, BOB, units("2")?, TransferCode::Internal)],
    )?;
    ensure!(overdraft == [CreateTransferResult::ExceedsCredits], "overdraft must be refused");
    let retry = step(
        &mut engine,
        "the deposit is retried after a timeout (same id)",
        &[transfer(1, CHAIN, ALICE, units("1.5")?, TransferCode::Deposit)],
    )?;
    ensure!(retry == [CreateTransferResult::Exists], "a retry must not credit twice");

    println!();
    println!("{:<8} {:>24} {:>24} {:>24}", "account", "debits", "credits", "balance");
    let mut found = Vec::new();
    engine.lookup_accounts(&[CHAIN, FEES, ALICE, BOB], &mut found)?;
    for (name, a) in ["chain", "fees", "alice", "bob"].iter().zip(&found) {
        let debits = a.debits_posted + a.debits_pending;
        let credits = a.credits_posted;
        let (sign, magnitude) =
            if credits >= debits { ("", credits - debits) } else { ("-", debits - credits) };
        println!(
            "{name:<8} {:>24} {:>24} {:>24}",
            eth.format_amount(debits),
            eth.format_amount(credits),
            format!("{sign}{}", eth.format_amount(magnitude))
        );
    }
    engine.check_invariants().map_err(|v| anyhow::anyhow!("invariant violated: {v}"))?;
    let totals = engine.ledger_totals();
    let t = totals.get(&eth.ledger).context("ledger totals")?;
    println!(
        "\nledger {}: debits {} = credits {} ({} accounts, {} transfers): balanced",
        eth.symbol,
        eth.format_amount(t.debits_posted),
        eth.format_amount(t.credits_posted),
        t.accounts,
        engine.transfers().len()
    );
    Ok(())
}

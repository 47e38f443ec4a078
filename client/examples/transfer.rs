//! An exchange's first program against Molly: connect, open two accounts,
//! move money between them, read the balances back.
//!
//! ```text
//! molly serve --data-dir ./data &          # writes data/server.addr and data/client-keys
//! cargo run -p molly-client --example transfer -- ./data
//! ```

use molly_client::{Client, ClientConfig};
use molly_engine::{Account, CreateTransferResult, Transfer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "data".into());
    let client = Client::connect(ClientConfig::from_data_dir(dir.as_ref())?).await?;
    let info = client.server_info().await?;
    println!(
        "connected: protocol {}, {} shard(s), batches up to {}",
        info.protocol_version, info.shards, info.batch_events_max
    );

    // Ledger 1 is ETH in wei (see docs/engine.md); ids are the caller's, and idempotent.
    let (alice, bob) = (0xA11CE_u128, 0xB0B_u128);
    let accounts = [alice, bob].map(|id| Account { id, ledger: 1, code: 1, ..Account::default() });
    for (account, result) in accounts.iter().zip(client.create_accounts(&accounts).await?) {
        println!("account {:#x}: {result}", account.id);
    }
    // A fresh id per run: a retry of the same id would answer `exists` (safe to resend).
    let id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let transfer = Transfer {
        id,
        debit_account_id: alice,
        credit_account_id: bob,
        amount: 1_500_000_000_000_000_000, // 1.5 ETH in wei
        ledger: 1,
        code: 1,
        ..Transfer::default()
    };
    let results = client.create_transfers(&[transfer]).await?;
    // Alice and Bob live on different shards of a two-shard server: the
    // transfer is cross-shard, atomic all the same.
    assert_eq!(results, [CreateTransferResult::Ok], "transfer {id}");
    for account in client.lookup_accounts(&[alice, bob]).await? {
        println!(
            "{:#x}: debits {} wei, credits {} wei",
            account.id, account.debits_posted, account.credits_posted
        );
    }
    Ok(())
}

//! The asset registry: ledger code → chain, symbol, decimals, contract or mint.
//!
//! Amounts are integer base units everywhere (wei, sun, lamports, satoshi,
//! token base units). This module converts between base units and decimal
//! strings for people, exactly, without floats.

use std::collections::BTreeMap;

/// The chains Molly serves.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Chain {
    /// Ethereum (ETH and ERC-20 tokens).
    Ethereum,
    /// Tron (TRX and TRC-20 tokens).
    Tron,
    /// Solana (SOL and SPL tokens).
    Solana,
    /// Bitcoin.
    Bitcoin,
}

impl Chain {
    /// The chain's lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Chain::Ethereum => "ethereum",
            Chain::Tron => "tron",
            Chain::Solana => "solana",
            Chain::Bitcoin => "bitcoin",
        }
    }
}

/// One asset: what a ledger code means.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Asset {
    /// The ledger code accounts and transfers carry.
    pub ledger: u32,
    /// The chain the asset lives on.
    pub chain: Chain,
    /// Ticker, unique in the registry (for example `USDT-ERC20`).
    pub symbol: String,
    /// Decimal places of one whole unit (18 for ETH, 8 for BTC).
    pub decimals: u8,
    /// Token contract (ERC-20, TRC-20) or mint (SPL); `None` for the native coin.
    pub contract: Option<String>,
}

/// Largest number of decimals any asset may declare: 10^38 < u128::MAX < 10^39.
pub const DECIMALS_MAX: u8 = 38;

/// Why an asset could not be registered or an amount not converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssetError {
    /// Ledger 0 is reserved.
    #[error("ledger code 0 is reserved")]
    LedgerZero,
    /// The ledger code is taken.
    #[error("ledger {ledger} is already registered as {symbol}")]
    LedgerTaken {
        /// The code.
        ledger: u32,
        /// The asset that holds it.
        symbol: String,
    },
    /// The symbol is taken.
    #[error("symbol {0} is already registered")]
    SymbolTaken(String),
    /// The symbol is empty or has characters other than A–Z, 0–9, '-' and '.'.
    #[error("symbol {0:?} must be 1-16 characters of A-Z, 0-9, '-' or '.'")]
    BadSymbol(String),
    /// Too many decimals for a u128 amount.
    #[error("decimals {0} exceeds the maximum of {DECIMALS_MAX}")]
    TooManyDecimals(u8),
    /// The amount string is not a decimal number.
    #[error("amount {0:?} is not a decimal number")]
    BadAmount(String),
    /// The amount has more fractional digits than the asset.
    #[error("amount {amount:?} has more than {decimals} decimal places")]
    TooPrecise {
        /// The input.
        amount: String,
        /// The asset's decimals.
        decimals: u8,
    },
    /// The amount does not fit in u128 base units.
    #[error("amount {0:?} overflows u128 base units")]
    AmountOverflow(String),
}

impl Asset {
    /// Formats `amount` base units as a decimal string with all the asset's
    /// decimals (`1500000000000000000` wei → `1.500000000000000000`).
    pub fn format_amount(&self, amount: u128) -> String {
        let digits = amount.to_string();
        let decimals = self.decimals as usize;
        if decimals == 0 {
            return digits;
        }
        let padded = format!("{digits:0>width$}", width = decimals + 1);
        let (whole, fraction) = padded.split_at(padded.len() - decimals);
        format!("{whole}.{fraction}")
    }

    /// Parses a decimal string (`"1.5"`, `"0.000001"`, `"42"`) into base
    /// units, refusing more decimals than the asset has and any overflow.
    pub fn parse_amount(&self, text: &str) -> Result<u128, AssetError> {
        let bad = || AssetError::BadAmount(text.to_string());
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(bad());
        }
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || !all_digits(fraction) || (text.contains('.') && fraction.is_empty()) {
            return Err(bad());
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > self.decimals as usize {
            return Err(AssetError::TooPrecise { amount: text.to_string(), decimals: self.decimals });
        }
        let overflow = || AssetError::AmountOverflow(text.to_string());
        let scale = 10u128.pow(u32::from(self.decimals));
        let whole_units: u128 =
            if whole.is_empty() { 0 } else { whole.parse::<u128>().map_err(|_| overflow())? };
        let fraction_units: u128 = if fraction.is_empty() {
            0
        } else {
            let pad = self.decimals as usize - fraction.len();
            fraction.parse::<u128>().map_err(|_| bad())? * 10u128.pow(pad as u32)
        };
        whole_units.checked_mul(scale).and_then(|w| w.checked_add(fraction_units)).ok_or_else(overflow)
    }
}

/// The registry of assets, keyed by ledger code.
#[derive(Clone, Debug, Default)]
pub struct AssetRegistry {
    by_ledger: BTreeMap<u32, Asset>,
}

impl AssetRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The assets Molly knows out of the box (ledger codes are stable):
    ///
    /// | ledger | symbol | chain | decimals | contract / mint |
    /// |---|---|---|---|---|
    /// | 1 | ETH | ethereum | 18 | |
    /// | 2 | USDT-ERC20 | ethereum | 6 | 0xdAC17F958D2ee523a2206206994597C13D831ec7 |
    /// | 3 | USDC-ERC20 | ethereum | 6 | 0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48 |
    /// | 10 | TRX | tron | 6 | |
    /// | 11 | USDT-TRC20 | tron | 6 | TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t |
    /// | 20 | SOL | solana | 9 | |
    /// | 21 | USDC-SPL | solana | 6 | EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v |
    /// | 30 | BTC | bitcoin | 8 | |
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        let builtin: [(u32, Chain, &str, u8, Option<&str>); 8] = [
            (1, Chain::Ethereum, "ETH", 18, None),
            (2, Chain::Ethereum, "USDT-ERC20", 6, Some("0xdAC17F958D2ee523a2206206994597C13D831ec7")),
            (3, Chain::Ethereum, "USDC-ERC20", 6, Some("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48")),
            (10, Chain::Tron, "TRX", 6, None),
            (11, Chain::Tron, "USDT-TRC20", 6, Some("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t")),
            (20, Chain::Solana, "SOL", 9, None),
            (21, Chain::Solana, "USDC-SPL", 6, Some("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v")),
            (30, Chain::Bitcoin, "BTC", 8, None),
        ];
        for (ledger, chain, symbol, decimals, contract) in builtin {
            registry
                .register(Asset {
                    ledger,
                    chain,
                    symbol: symbol.to_string(),
                    decimals,
                    contract: contract.map(str::to_string),
                })
                .expect("built-in assets are valid and distinct");
        }
        registry
    }

    /// Adds an asset; ledger codes and symbols are unique.
    pub fn register(&mut self, asset: Asset) -> Result<(), AssetError> {
        if asset.ledger == 0 {
            return Err(AssetError::LedgerZero);
        }
        let symbol_ok = (1..=16).contains(&asset.symbol.len())
            && asset
                .symbol
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !symbol_ok {
            return Err(AssetError::BadSymbol(asset.symbol));
        }
        if asset.decimals > DECIMALS_MAX {
            return Err(AssetError::TooManyDecimals(asset.decimals));
        }
        if let Some(existing) = self.by_ledger.get(&asset.ledger) {
            return Err(AssetError::LedgerTaken { ledger: asset.ledger, symbol: existing.symbol.clone() });
        }
        if self.by_symbol(&asset.symbol).is_some() {
            return Err(AssetError::SymbolTaken(asset.symbol));
        }
        self.by_ledger.insert(asset.ledger, asset);
        Ok(())
    }

    /// The asset of a ledger code.
    pub fn get(&self, ledger: u32) -> Option<&Asset> {
        self.by_ledger.get(&ledger)
    }

    /// The asset with a symbol.
    pub fn by_symbol(&self, symbol: &str) -> Option<&Asset> {
        self.by_ledger.values().find(|a| a.symbol == symbol)
    }

    /// True when the ledger code is registered.
    #[inline]
    pub fn contains(&self, ledger: u32) -> bool {
        self.by_ledger.contains_key(&ledger)
    }

    /// Every asset, by ledger code.
    pub fn iter(&self) -> impl Iterator<Item = &Asset> {
        self.by_ledger.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(decimals: u8) -> Asset {
        Asset { ledger: 99, chain: Chain::Ethereum, symbol: "T".into(), decimals, contract: None }
    }

    #[test]
    fn formats_and_parses_exactly() {
        let eth = AssetRegistry::builtin().get(1).unwrap().clone();
        assert_eq!(eth.format_amount(1_500_000_000_000_000_000), "1.500000000000000000");
        assert_eq!(eth.format_amount(1), "0.000000000000000001");
        assert_eq!(eth.parse_amount("1.5").unwrap(), 1_500_000_000_000_000_000);
        assert_eq!(eth.parse_amount(".25").unwrap(), 250_000_000_000_000_000);
        assert_eq!(eth.parse_amount("0.000000000000000001").unwrap(), 1);
        assert_eq!(eth.parse_amount("1.500000000000000000000").unwrap(), 1_500_000_000_000_000_000);
        let btc = AssetRegistry::builtin().by_symbol("BTC").unwrap().clone();
        assert_eq!(btc.parse_amount("21000000").unwrap(), 2_100_000_000_000_000);
        assert_eq!(asset(0).format_amount(42), "42");
        for amount in [0u128, 1, 999, 10u128.pow(18), u128::MAX] {
            assert_eq!(eth.parse_amount(&eth.format_amount(amount)).unwrap(), amount);
        }
    }

    #[test]
    fn rejects_bad_amounts() {
        let usdt = AssetRegistry::builtin().get(2).unwrap().clone();
        for bad in ["", ".", "1.", "-1", "1e6", "1,5", " 1", "0x10", "1.2.3"] {
            assert!(matches!(usdt.parse_amount(bad), Err(AssetError::BadAmount(_))), "{bad:?}");
        }
        assert!(matches!(usdt.parse_amount("0.0000001"), Err(AssetError::TooPrecise { decimals: 6, .. })));
        assert!(matches!(
            usdt.parse_amount("999999999999999999999999999999999999999"),
            Err(AssetError::AmountOverflow(_))
        ));
    }

    #[test]
    fn registry_keeps_codes_and_symbols_unique() {
        let mut registry = AssetRegistry::builtin();
        assert_eq!(registry.iter().count(), 8);
        let mut dup = asset(6);
        dup.ledger = 1;
        assert!(matches!(registry.register(dup), Err(AssetError::LedgerTaken { ledger: 1, .. })));
        let mut dup = asset(6);
        dup.symbol = "ETH".into();
        assert_eq!(registry.register(dup), Err(AssetError::SymbolTaken("ETH".into())));
        let mut zero = asset(6);
        zero.ledger = 0;
        assert_eq!(registry.register(zero), Err(AssetError::LedgerZero));
        let mut lower = asset(6);
        lower.symbol = "eth".into();
        assert!(matches!(registry.register(lower), Err(AssetError::BadSymbol(_))));
        assert_eq!(registry.register(asset(39)), Err(AssetError::TooManyDecimals(39)));
        registry.register(asset(6)).unwrap();
        assert_eq!(registry.get(99).unwrap().symbol, "T");
    }
}

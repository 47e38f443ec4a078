//! Molly's ledger engine (work in progress).

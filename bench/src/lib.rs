//! Molly's benchmark drivers (work in progress).

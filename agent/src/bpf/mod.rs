//! eBPF loading (stub; being written).

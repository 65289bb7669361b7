//! Interfaces added and removed while the dataplane runs (`interface.add`/`interface.remove`):
//! the control thread asks, through this trait, whoever owns the XDP programs and the workers
//! (the daemon). `api` knows neither `io` nor XDP, as with [`crate::pipeline::Publisher`].

/// Serves interfaces at run time. Implementations attach the XDP program, open the AF_XDP
/// socket on a worker's UMEM, hand it to the worker through its queue and register it in the
/// program's XSKMAP (and the reverse); errors are sentences that say what to do.
pub trait Interfaces: Send {
    /// Serves `ifname` from now on: `Ok(true)` when added now, `Ok(false)` when already served
    /// (configured at start, or added before).
    fn add(&mut self, ifname: &str) -> Result<bool, String>;

    /// Stops serving an interface `add` added: `Ok(true)` when removed now, `Ok(false)` when it
    /// was not added at run time (interfaces of the configuration stay).
    fn remove(&mut self, ifname: &str) -> Result<bool, String>;
}

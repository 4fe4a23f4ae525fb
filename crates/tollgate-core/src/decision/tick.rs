//! A worker's tick: what it gives back and returns. Blocks unused for
//! [`idle_block_ns`] go back where they came from; the balance of leases unused for
//! `lease_idle_return_ms` is zeroed, to be returned to the quota service.

use super::local::{give_back, GivenBack};
use crate::config::Config;
use crate::lease::{self, IdleReturn, LeaseRef, Records, RefilledLease};
use crate::store::SharedStore;
use crate::time::Nanos;
use crate::worker::{idle_block_ns, Tick, Worker};
use crate::worker_block::MAX_GIVE_BACKS_PER_TICK;

/// Gives back the worker's blocks unused for [`idle_block_ns`], at most
/// [`MAX_GIVE_BACKS_PER_TICK`]: into shared data, or (a lease's whose record has moved on)
/// as returns to the service.
pub fn give_back_idle_blocks<S: SharedStore + ?Sized>(
    config: &Config,
    store: &S,
    worker: &mut Worker,
    now: Nanos,
) -> Tick {
    let idle = worker.blocks.take_idle(now, idle_block_ns(config), MAX_GIVE_BACKS_PER_TICK);
    let mut tick = Tick::default();
    for block in &idle {
        match give_back(config, store, block, now) {
            Ok(GivenBack::Shared) => {
                tick.blocks_given_back += 1;
                // Units given back to a lease whose balance another worker returned
                // already: this worker returns them once the lease is idle.
                if let Some(back) = &block.lease {
                    worker.remember(RefilledLease {
                        lease: LeaseRef::from_fingerprint(block.fingerprint, config.store.slots),
                        key: back.key.clone(),
                        limits: back.limits.clone(),
                    });
                }
            }
            Ok(GivenBack::ToService(request)) => tick.returns.push(request),
            Ok(GivenBack::Void) | Err(_) => {}
        }
    }
    tick
}

/// The worker's periodic work: idle blocks given back, and the balance of leases unused
/// for `lease_idle_return_ms` zeroed, to be returned to the service.
pub fn tick<S: SharedStore + ?Sized>(config: &Config, store: &S, worker: &mut Worker, now: Nanos) -> Tick {
    let mut tick = give_back_idle_blocks(config, store, worker, now);
    let Some(quota) = config.quota.as_ref() else {
        return tick;
    };
    let idle_ns = quota.lease_idle_return_ms.saturating_mul(1_000_000);
    let records = Records { store, retries: config.store.cas_retries, marker_ttl_ns: lease::marker_ttl_ns(quota), now };
    worker.leases.retain(|lease| match records.return_idle(lease, idle_ns) {
        Ok(IdleReturn::Busy) | Err(_) => true,
        Ok(IdleReturn::Gone) => false,
        Ok(IdleReturn::Send(request)) => {
            tick.returns.push(request);
            false
        }
    });
    tick
}

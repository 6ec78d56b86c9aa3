//! What this replica holds per printer (open connections, event streams), so that
//! something that happened to a printer — a revocation, new work — reaches it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

type Entries<T> = HashMap<Uuid, Vec<(u64, T)>>;

/// Entries by printer; each one is removed when its [`Registration`] is dropped.
pub struct Registry<T> {
    by_printer: Mutex<Entries<T>>,
    next: AtomicU64,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            by_printer: Mutex::default(),
            next: AtomicU64::new(0),
        }
    }
}

/// Keeps its entry in the registry while it lives.
pub struct Registration<T> {
    registry: Arc<Registry<T>>,
    printer: Uuid,
    id: u64,
}

impl<T> Drop for Registration<T> {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        if let Some(list) = map.get_mut(&self.printer) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.printer);
            }
        }
    }
}

impl<T> Registry<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<T>> {
        self.by_printer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Clone> Registry<T> {
    pub fn register(self: &Arc<Self>, printer: Uuid, entry: T) -> Registration<T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(printer).or_default().push((id, entry));
        Registration {
            registry: self.clone(),
            printer,
            id,
        }
    }

    /// Registers `entry` unless the printer already has `limit` entries for which `same`
    /// holds (counted and added under one lock, so concurrent callers cannot overshoot).
    pub fn register_bounded(
        self: &Arc<Self>,
        printer: Uuid,
        entry: T,
        limit: usize,
        same: impl Fn(&T) -> bool,
    ) -> Option<Registration<T>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        let list = map.entry(printer).or_default();
        if list.iter().filter(|(_, e)| same(e)).count() >= limit {
            if list.is_empty() {
                map.remove(&printer);
            }
            return None;
        }
        list.push((id, entry));
        drop(map);
        Some(Registration {
            registry: self.clone(),
            printer,
            id,
        })
    }

    /// The entries of one printer.
    pub fn of(&self, printer: Uuid) -> Vec<T> {
        self.lock()
            .get(&printer)
            .map(|l| l.iter().map(|(_, e)| e.clone()).collect())
            .unwrap_or_default()
    }

    /// Every entry.
    pub fn all(&self) -> Vec<T> {
        self.lock()
            .values()
            .flat_map(|l| l.iter().map(|(_, e)| e.clone()))
            .collect()
    }

    /// The printers with an entry.
    pub fn printers(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }
}

//! A slab of flows addressed by [`FlowId`]: dense slot indices with a generation per slot, so
//! an id from a closed flow (a late datagram on a closed socket, a stale completion) never
//! reaches the flow that reuses its slot. Freed slots are reused last-in first-out (warm
//! cache lines). It only grows, up to the most flows live at once — the table's cap bounds it.
//!
//! A slot's generation is a `u32`: an id could alias only after four billion reuses of one
//! slot while a report for the first is still on its way.

use super::FlowId;

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

#[derive(Debug)]
pub(super) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Slab<T> {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Live values.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Slots ever used (live or free): the range a sweep walks.
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn insert(&mut self, value: T) -> FlowId {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            debug_assert!(slot.value.is_none(), "a free slot holds a value");
            slot.value = Some(value);
            return FlowId {
                index,
                generation: slot.generation,
            };
        }
        // The table's cap (at most 2^20 flows) keeps this far below u32::MAX.
        let index = self.slots.len() as u32;
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        FlowId {
            index,
            generation: 0,
        }
    }

    pub(super) fn get(&self, id: FlowId) -> Option<&T> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.value.as_ref())
    }

    pub(super) fn get_mut(&mut self, id: FlowId) -> Option<&mut T> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.value.as_mut())
    }

    /// The live value at slot `index` (whatever its generation), with its id.
    pub(super) fn at(&self, index: usize) -> Option<(FlowId, &T)> {
        let slot = self.slots.get(index)?;
        let value = slot.value.as_ref()?;
        Some((
            FlowId {
                index: index as u32,
                generation: slot.generation,
            },
            value,
        ))
    }

    /// Takes the value out; the slot's generation moves on, so `id` is stale from now on.
    pub(super) fn remove(&mut self, id: FlowId) -> Option<T> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)?;
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.live -= 1;
        Some(value)
    }

    /// Every live value with its id, in slot order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (FlowId, &T)> {
        (0..self.slots.len()).filter_map(|i| self.at(i))
    }

    /// Whether the bookkeeping adds up (free slots empty, the live count right).
    #[cfg(test)]
    pub(super) fn verify(&self) -> Result<(), String> {
        let live = self.slots.iter().filter(|s| s.value.is_some()).count();
        if live != self.live {
            return Err(format!("slab: {live} live slots, counted {}", self.live));
        }
        if live + self.free.len() != self.slots.len() {
            return Err(format!(
                "slab: {live} live + {} free != {} slots",
                self.free.len(),
                self.slots.len()
            ));
        }
        if let Some(i) = self
            .free
            .iter()
            .find(|&&i| self.slots[i as usize].value.is_some())
        {
            return Err(format!("slab: free slot {i} holds a value"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_id() {
        let mut s = Slab::new();
        let a = s.insert("a");
        assert_eq!(s.get(a), Some(&"a"));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "removed once");
        let b = s.insert("b");
        assert_eq!(b.index, a.index, "the slot is reused");
        assert_ne!(b, a);
        assert_eq!(s.get(a), None, "the stale id finds nothing");
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!((s.len(), s.slots()), (1, 1));
        s.verify().unwrap();
    }
}

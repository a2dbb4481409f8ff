package stunkeeper

import (
	"sync"

	"github.com/pion/stun/v3"
)

// waiters are the transactions awaiting an answer, by transaction ID: the
// Keeper's and each NAT-test socket's. An answer is taken once, and its
// entry goes with it, so a duplicate or a late answer finds nothing. The
// zero value is ready to use.
type waiters[T any] struct {
	mu sync.Mutex
	m  map[txID]chan T
}

// add registers ch for id; the func returned removes it (a no-op once
// the answer was taken).
func (w *waiters[T]) add(id txID, ch chan T) (remove func()) {
	w.mu.Lock()
	w.put(id, ch)
	w.mu.Unlock()
	return w.remover(id)
}

// addNew registers ch under a fresh random ID that no waiting transaction
// has.
func (w *waiters[T]) addNew(ch chan T) (txID, func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		id := stun.NewTransactionID()
		if _, dup := w.m[id]; !dup {
			w.put(id, ch)
			return id, w.remover(id)
		}
	}
}

func (w *waiters[T]) put(id txID, ch chan T) {
	if w.m == nil {
		w.m = make(map[txID]chan T)
	}
	w.m[id] = ch
}

func (w *waiters[T]) remover(id txID) func() {
	return func() {
		w.mu.Lock()
		delete(w.m, id)
		w.mu.Unlock()
	}
}

// take removes id's entry and returns its channel.
func (w *waiters[T]) take(id txID) (chan T, bool) {
	w.mu.Lock()
	ch, ok := w.m[id]
	delete(w.m, id)
	w.mu.Unlock()
	return ch, ok
}

// len is how many transactions wait.
func (w *waiters[T]) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.m)
}

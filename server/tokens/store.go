package tokens

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/pullwake/pullwake/internal/secret"
)

const shardCount = 256

// Owner is the durable identity of the claim that holds a write token.
type Owner struct {
	ConsumerID string
	Epoch      int64
}

type entry struct {
	token string
	owner Owner
}

type shard struct {
	mu sync.Mutex // serializes writers; readers never take it
	m  atomic.Pointer[map[string]entry]
}

// Store maps stream paths to their live write token. The zero value is not
// usable; call New.
type Store struct {
	seed   maphash.Seed
	key    []byte // signs write tokens (HMAC-SHA256)
	shards [shardCount]shard
	size   atomic.Int64
}

// New returns an empty store with a random signing key: its tokens are
// valid in this process only. Servers that share a database use NewKeyed
// with the key stored there.
func New() *Store { return NewKeyed(nil) }

// NewKeyed returns an empty store whose tokens are signed with key (32
// bytes; nil = a random key).
func NewKeyed(key []byte) *Store {
	if key == nil {
		key = randomKey()
	}
	s := &Store{seed: maphash.MakeSeed(), key: key}
	for i := range s.shards {
		m := map[string]entry{}
		s.shards[i].m.Store(&m)
	}
	return s
}

func (s *Store) shard(path string) *shard {
	return &s.shards[maphash.String(s.seed, path)%shardCount]
}

// update replaces the shard's map with a modified copy.
func (sh *shard) update(fn func(m map[string]entry) bool) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := *sh.m.Load()
	m := make(map[string]entry, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	if !fn(m) {
		return false
	}
	sh.m.Store(&m)
	return true
}

// Mint makes the write token of the claim owner, whose claim token is
// claimToken, for path, evicting any older token of that stream, and
// returns it. The same claim always gets the same token (its secret is
// derived from the claim token, whose hash the claim row keeps).
func (s *Store) Mint(path string, owner Owner, claimToken string) string {
	tok := s.format(path, owner, WriteSecret(claimToken))
	s.shard(path).update(func(m map[string]entry) bool {
		if _, ok := m[path]; !ok {
			s.size.Add(1)
		}
		m[path] = entry{token: tok, owner: owner}
		return true
	})
	return tok
}

// Adopt records token as path's write token, held by owner, after the
// caller found owner's claim active with that token in the database. It
// never replaces the token of a newer claim (a higher epoch: a stream
// belongs to one entity, whose epochs only grow), so an answer about an
// old claim that arrives late cannot displace a fresh mint.
func (s *Store) Adopt(path string, owner Owner, token string) bool {
	return s.shard(path).update(func(m map[string]entry) bool {
		e, ok := m[path]
		if ok && e.owner.Epoch > owner.Epoch {
			return false
		}
		if !ok {
			s.size.Add(1)
		}
		m[path] = entry{token: token, owner: owner}
		return true
	})
}

// Valid reports whether token is the live write token of path, and the
// claim that holds it. Constant-time comparison; no allocation.
func (s *Store) Valid(path, token string) (Owner, bool) {
	e, ok := (*s.shard(path).m.Load())[path]
	if !ok || token == "" || !secret.Equal(e.token, token) {
		return Owner{}, false
	}
	return e.owner, true
}

// Owns reports whether owner holds the token of path.
func (s *Store) Owns(path string, owner Owner) bool {
	e, ok := (*s.shard(path).m.Load())[path]
	return ok && e.owner == owner
}

// ClearIfOwner drops path's token only if owner still holds it, so a late
// done or expiry of an old claim never clears a newer claim's token.
func (s *Store) ClearIfOwner(path string, owner Owner) bool {
	sh := s.shard(path)
	if e, ok := (*sh.m.Load())[path]; !ok || e.owner != owner {
		return false // common case: nothing to do, no copy
	}
	return sh.update(func(m map[string]entry) bool {
		if e, ok := m[path]; !ok || e.owner != owner {
			return false
		}
		delete(m, path)
		s.size.Add(-1)
		return true
	})
}

// Len is the number of live tokens.
func (s *Store) Len() int { return int(s.size.Load()) }

// Held is one live token's stream and owner.
type Held struct {
	Path  string
	Owner Owner
}

// Snapshot lists every live token's stream and owner.
func (s *Store) Snapshot() []Held {
	var out []Held
	for i := range s.shards {
		for p, e := range *s.shards[i].m.Load() {
			out = append(out, Held{Path: p, Owner: e.owner})
		}
	}
	return out
}

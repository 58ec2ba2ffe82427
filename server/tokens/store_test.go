package tokens

import (
	"fmt"
	"sync"
	"testing"
)

func TestMintEvictsOlderToken(t *testing.T) {
	t.Parallel()
	s := New()
	a := s.Mint("/v1/stream/chat/1/main", Owner{"wake-1", 1}, "claim-token")
	b := s.Mint("/v1/stream/chat/1/main", Owner{"wake-2", 2}, "claim-token")
	if _, ok := s.Valid("/v1/stream/chat/1/main", a); ok {
		t.Fatal("older token still valid after a newer mint")
	}
	o, ok := s.Valid("/v1/stream/chat/1/main", b)
	if !ok || o != (Owner{"wake-2", 2}) {
		t.Fatalf("newer token: owner %v ok %v", o, ok)
	}
	if s.Len() != 1 {
		t.Fatalf("Len = %d, want 1", s.Len())
	}
}

func TestValidRejects(t *testing.T) {
	t.Parallel()
	s := New()
	tok := s.Mint("/a", Owner{"c", 1}, "claim-token")
	other := s.Mint("/b", Owner{"d", 1}, "claim-token")
	last := byte('x')
	if tok[len(tok)-1] == last {
		last = 'y'
	}
	for name, tc := range map[string]struct{ path, token string }{
		"empty":         {"/a", ""},
		"wrong":         {"/a", tok[:len(tok)-1] + string(last)},
		"other stream":  {"/a", other},
		"unknown path":  {"/c", tok},
		"prefix":        {"/a", tok[:10]},
		"longer suffix": {"/a", tok + "x"},
	} {
		if _, ok := s.Valid(tc.path, tc.token); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClearIfOwnerKeepsNewerToken(t *testing.T) {
	t.Parallel()
	s := New()
	s.Mint("/a", Owner{"wake-1", 1}, "claim-token")
	newer := s.Mint("/a", Owner{"wake-2", 2}, "claim-token")
	if s.ClearIfOwner("/a", Owner{"wake-1", 1}) {
		t.Fatal("late owner cleared the newer token")
	}
	if _, ok := s.Valid("/a", newer); !ok {
		t.Fatal("newer token lost")
	}
	if !s.Owns("/a", Owner{"wake-2", 2}) || s.Owns("/a", Owner{"wake-1", 1}) {
		t.Fatal("Owns wrong")
	}
	if !s.ClearIfOwner("/a", Owner{"wake-2", 2}) {
		t.Fatal("owner could not clear its token")
	}
	if _, ok := s.Valid("/a", newer); ok || s.Len() != 0 {
		t.Fatalf("token survives clear; Len %d", s.Len())
	}
}

func TestClearAndSnapshot(t *testing.T) {
	t.Parallel()
	s := New()
	s.Mint("/a", Owner{"x", 1}, "claim-token")
	s.Mint("/b", Owner{"y", 3}, "claim-token")
	if got := len(s.Snapshot()); got != 2 {
		t.Fatalf("snapshot has %d, want 2", got)
	}
	if !s.ClearIfOwner("/a", Owner{"x", 1}) || s.ClearIfOwner("/a", Owner{"x", 1}) {
		t.Fatal("ClearIfOwner should clear once")
	}
	snap := s.Snapshot()
	if len(snap) != 1 || snap[0] != (Held{"/b", Owner{"y", 3}}) {
		t.Fatalf("snapshot %v", snap)
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	s := New()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				p := fmt.Sprintf("/s/%d", i%50)
				o := Owner{fmt.Sprintf("c%d", g), int64(i)}
				tok := s.Mint(p, o, "claim-token")
				if got, ok := s.Valid(p, tok); ok && got != o {
					t.Errorf("token of %v maps to %v", o, got)
					return
				}
				s.ClearIfOwner(p, o)
			}
		}()
	}
	wg.Wait()
	if n := len(s.Snapshot()); n != s.Len() {
		t.Fatalf("Len %d disagrees with snapshot %d", s.Len(), n)
	}
}

func BenchmarkValid(b *testing.B) {
	s := New()
	tok := s.Mint("/v1/stream/chat/42/main", Owner{"wake-1", 1}, "claim-token")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := s.Valid("/v1/stream/chat/42/main", tok); !ok {
			b.Fatal("invalid")
		}
	}
}

func BenchmarkValidParallel(b *testing.B) {
	s := New()
	const n = 1024
	paths := make([]string, n)
	toks := make([]string, n)
	for i := range paths {
		paths[i] = fmt.Sprintf("/v1/stream/chat/%d/main", i)
		toks[i] = s.Mint(paths[i], Owner{fmt.Sprintf("wake-%d", i), 1}, "claim-token")
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := s.Valid(paths[i%n], toks[i%n]); !ok {
				b.Fatal("invalid")
			}
			i++
		}
	})
}

func BenchmarkMint(b *testing.B) {
	s := New()
	const n = 10000
	paths := make([]string, n)
	for i := range paths {
		paths[i] = fmt.Sprintf("/v1/stream/chat/%d/main", i)
		s.Mint(paths[i], Owner{"w", 1}, "claim-token")
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.Mint(paths[i%n], Owner{"w", int64(i)}, "claim-token")
		i++
	}
}

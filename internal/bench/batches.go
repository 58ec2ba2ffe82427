package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// batchHist is the server's pullwake_group_commit_batch_size histogram of
// one transition: cumulative counts per upper bound, the count and the sum.
type batchHist struct {
	buckets map[float64]float64 // le -> cumulative count
	count   float64
	sum     float64
}

// batchStats maps a transition (release, claim, append) to its histogram.
type batchStats map[string]*batchHist

// scrapeBatches reads the batch-size histograms from a server's /metrics;
// nil when the server does not serve them (group commit off, or an older
// server).
func scrapeBatches(ctx context.Context, c *http.Client, base string) batchStats {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	out := batchStats{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		scrapeLine(out, sc.Text())
	}
	return out
}

// minus is what was recorded between two scrapes.
func (a batchStats) minus(b batchStats) batchStats {
	if a == nil {
		return nil
	}
	out := batchStats{}
	for tr, h := range a {
		d := &batchHist{buckets: map[float64]float64{}, count: h.count, sum: h.sum}
		if o := b[tr]; o != nil {
			d.count -= o.count
			d.sum -= o.sum
		}
		for le, v := range h.buckets {
			d.buckets[le] = v
			if o := b[tr]; o != nil {
				d.buckets[le] -= o.buckets[le]
			}
		}
		if d.count > 0 {
			out[tr] = d
		}
	}
	return out
}

// String is one line per transition: batches, items, mean size and the
// share of batches per size range.
func (s batchStats) String() string {
	trs := make([]string, 0, len(s))
	for tr := range s {
		trs = append(trs, tr)
	}
	sort.Strings(trs)
	var parts []string
	for _, tr := range trs {
		h := s[tr]
		les := make([]float64, 0, len(h.buckets))
		for le := range h.buckets {
			les = append(les, le)
		}
		sort.Float64s(les)
		var dist []string
		prev, prevLE := 0.0, 0.0
		for _, le := range les {
			n := h.buckets[le] - prev
			if n > 0 {
				rng := fmt.Sprintf("%g", le)
				if le-prevLE > 1 {
					rng = fmt.Sprintf("%g-%g", prevLE+1, le)
				}
				dist = append(dist, fmt.Sprintf("%s:%.0f%%", rng, 100*n/h.count))
			}
			prev, prevLE = h.buckets[le], le
		}
		if rest := h.count - prev; rest > 0 {
			dist = append(dist, fmt.Sprintf(">%g:%.0f%%", prevLE, 100*rest/h.count))
		}
		parts = append(parts, fmt.Sprintf("%s %.0f batches, mean %.1f items [%s]", tr, h.count, h.sum/h.count, strings.Join(dist, " ")))
	}
	return strings.Join(parts, "; ")
}

// scrapeLine adds one exposition line to out when it is a sample of
// pullwake_group_commit_batch_size.
func scrapeLine(out batchStats, line string) {
	const name = "pullwake_group_commit_batch_size"
	if !strings.HasPrefix(line, name) {
		return
	}
	kind, rest, ok := strings.Cut(line[len(name):], "{")
	if !ok {
		return
	}
	labels, val, ok := strings.Cut(rest, "} ")
	if !ok {
		return
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
	if err != nil {
		return
	}
	var tr, le string
	for _, kv := range strings.Split(labels, ",") {
		k, v, _ := strings.Cut(kv, "=")
		v = strings.Trim(v, `"`)
		switch k {
		case "transition":
			tr = v
		case "le":
			le = v
		}
	}
	if tr == "" {
		return
	}
	h := out[tr]
	if h == nil {
		h = &batchHist{buckets: map[float64]float64{}}
		out[tr] = h
	}
	switch kind {
	case "_bucket":
		if b, err := strconv.ParseFloat(le, 64); err == nil && le != "+Inf" {
			h.buckets[b] = v
		}
	case "_count":
		h.count = v
	case "_sum":
		h.sum = v
	}
}

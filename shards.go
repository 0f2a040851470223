package main

// The stream's shards as PutRecords answers show them, without ListShards (which would need
// another IAM permission): every stored entry names its ShardId, and every entry refused for a
// shard's throughput names the shard in its message. A shard owns one contiguous range of the
// 128-bit hash key space (the MD5 of the partition key), so a key whose hash lies between two
// learnt hashes of the same shard belongs to that shard too. Throughput is paced per shard that
// has refused entries (pacer.go), so that a hot shard among healthy ones holds back only its own
// entries, and calls stay full of entries for the shards that accept.

import (
	"bytes"
	"crypto/md5"
	"encoding/binary"
	"math"
	"math/big"
	"math/bits"
	"slices"
	"strings"
	"time"
)

// hashKey is a partition key's MD5, big-endian: Kinesis's hash key, ordered as bytes.
type hashKey [md5.Size]byte

func hashOf(partitionKey string) hashKey { return md5.Sum([]byte(partitionKey)) }

// hashPoint is one learnt hash key and the shard that took it.
type hashPoint struct {
	hash  hashKey
	shard string
}

// shardMap is a bounded, sorted set of learnt points of the hash key space.
type shardMap struct {
	points []hashPoint
}

// maxHashPoints bounds the map: about 40 KB, and ample for the shards one environment writes to.
const maxHashPoints = 1024

// find returns the index of the first point at or above h.
func (m *shardMap) find(h hashKey) int {
	i, _ := slices.BinarySearchFunc(m.points, h, func(p hashPoint, h hashKey) int { return bytes.Compare(p.hash[:], h[:]) })
	return i
}

// shardOf returns the shard that owns h, when the points around it say so.
func (m *shardMap) shardOf(h hashKey) (string, bool) {
	i := m.find(h)
	if i < len(m.points) && m.points[i].hash == h {
		return m.points[i].shard, true
	}
	if i == 0 || i == len(m.points) || m.points[i-1].shard != m.points[i].shard {
		return "", false
	}
	return m.points[i].shard, true
}

// nearest returns the shard of the learnt point nearest to h ("" while none is learnt): when
// shardOf does not know h's shard, the likeliest owner of h (a shard owns one contiguous range).
func (m *shardMap) nearest(h hashKey) string {
	i := m.find(h)
	switch {
	case len(m.points) == 0:
		return ""
	case i == 0:
		return m.points[0].shard
	case i == len(m.points):
		return m.points[i-1].shard
	}
	below, above := m.points[i-1], m.points[i]
	if less(span(h, above.hash), span(below.hash, h)) {
		return above.shard
	}
	return below.shard // the nearer, or as near
}

// span is b − a, for a ≤ b, as two 64-bit halves.
func span(a, b hashKey) [2]uint64 {
	lo, borrow := bits.Sub64(binary.BigEndian.Uint64(b[8:]), binary.BigEndian.Uint64(a[8:]), 0)
	hi, _ := bits.Sub64(binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(a[:8]), borrow)
	return [2]uint64{hi, lo}
}

// less orders spans.
func less(x, y [2]uint64) bool { return x[0] < y[0] || x[0] == y[0] && x[1] < y[1] }

// learn records that shard took h. A point that disagrees with its neighbours wins over them
// (a resharded stream): the neighbours that said otherwise are forgotten.
func (m *shardMap) learn(h hashKey, shard string) {
	i := m.find(h)
	if i < len(m.points) && m.points[i].hash == h {
		m.points[i].shard = shard
		return
	}
	if i > 0 && i < len(m.points) && m.points[i-1].shard == shard && m.points[i].shard == shard {
		return // already implied
	}
	if len(m.points) >= maxHashPoints {
		m.thin()
		i = m.find(h)
	}
	m.points = slices.Insert(m.points, i, hashPoint{h, shard})
	// A point between two of its shard's adds nothing to a lookup: keep each run's ends.
	if i+2 < len(m.points) && m.points[i+1].shard == shard && m.points[i+2].shard == shard {
		m.points = slices.Delete(m.points, i+1, i+2)
	}
	if i >= 2 && m.points[i-1].shard == shard && m.points[i-2].shard == shard {
		m.points = slices.Delete(m.points, i-1, i)
	}
}

// runs returns how many runs of one shard the map holds: the shards learnt, as a shard owns one
// contiguous range.
func (m *shardMap) runs() int {
	n := 0
	for i, p := range m.points {
		if i == 0 || m.points[i-1].shard != p.shard {
			n++
		}
	}
	return n
}

// thin halves the map, keeping each shard's outermost points, which are what a lookup needs.
func (m *shardMap) thin() {
	kept := m.points[:0]
	for i, p := range m.points {
		edge := i == 0 || i == len(m.points)-1 || m.points[i-1].shard != p.shard || m.points[i+1].shard != p.shard
		if edge || i%2 == 0 {
			kept = append(kept, p)
		}
	}
	clear(m.points[len(kept):])
	m.points = kept
	if len(m.points) >= maxHashPoints {
		m.points = m.points[:maxHashPoints/2] // shards too many to keep apart: forget the rest
	}
}

// refusedShard returns the shard a ProvisionedThroughputExceededException message names:
// "Rate exceeded for shard shardId-000000000001 in stream NAME under account 123456789012."
func refusedShard(message string) (string, bool) {
	const marker = "for shard "
	i := strings.Index(message, marker)
	if i < 0 {
		return "", false
	}
	rest := message[i+len(marker):]
	if j := strings.IndexByte(rest, ' '); j >= 0 {
		rest = rest[:j]
	}
	return rest, strings.HasPrefix(rest, "shardId-")
}

// shardPacers are the pacers of the shards that have refused entries for throughput, with the
// map that tells which shard a partition key goes to.
type shardPacers struct {
	shards  shardMap
	pacers  map[string]*pacer
	newPace func() *pacer
	names   map[string]string // interned shard ids
	random  map[string]*randomShare
	// shardScratch and largestScratch are learn's: the shard of each entry of the call, and the
	// largest entry of each shard stored after the one at hand.
	shardScratch   []string
	largestScratch map[string]int
	// strangers is how many entries that no paced shard gates (their shard has not refused, or
	// is not known) a call may carry while some shard is paced (0: strangerProbe); see
	// strangerWindow.
	strangers int
	lentAt    time.Time // the last entry lend let go
	offered   offeredRate
}

// maxShardPacers bounds the pacers kept; past it, the shards paced no longer are forgotten.
const maxShardPacers = 256

func newShardPacers(newPace func() *pacer) *shardPacers {
	return &shardPacers{pacers: map[string]*pacer{}, newPace: newPace, names: map[string]string{}, random: map[string]*randomShare{}, largestScratch: map[string]int{}}
}

// gate returns the paced shard whose pacer must grant an entry with key ("" for none), and
// whether the map knows key's shard: its shard's, or, while its shard is unknown, the shard of the
// learnt point nearest to its hash (shardMap.nearest), its likeliest owner. An entry of unknown
// shard is learnt from its answer. (Sent freely, such entries were most of what a fleet of a
// thousand environments sent into its paced shards: each environment learns a point or so per
// invocation, and at overload its backlog is of keys it has not sent yet. Held for the pacers of
// both neighbours, they were sent late or never — lend.)
func (s *shardPacers) gate(key string) (shard string, known bool) {
	if len(s.pacers) == 0 {
		return "", false // no MD5 while no shard has refused
	}
	h := hashOf(key)
	shard, known = s.shards.shardOf(h)
	if !known {
		shard = s.shards.nearest(h)
	}
	if p := s.pacers[shard]; p == nil || !p.paced {
		shard = ""
	}
	return shard, known
}

// grantOne asks the pacer that gates key (gate) for one entry, and reports whether it granted it.
func (s *shardPacers) grantOne(key string) bool {
	shard, _ := s.gate(key)
	return shard == "" || s.pacers[shard].grant(1) > 0
}

// lend reports whether an entry of unknown shard that shard's pacer gates may go now although the
// pacer granted nothing: one such entry a lendEvery, on credit (the shipper spends a grant the
// pacer does not have, and its tokens go below zero until the credit is repaid). Under overload
// the buffer goes oldest first at a fraction of the rate it fills, and the entries of a shard that
// the environment has not sent to yet wait behind older ones of the shard whose pacer gates them:
// reached late or never, they never teach the map their shard. (Simulated, a thousand
// environments at 10× overload on four shards: a fifth of those that lived the whole run never
// sent an entry to one of the shards, and their share delivered was the fleet's lowest.
// BENCHMARKS.md, "Entries of unknown shard".)
func (s *shardPacers) lend(shard string, now time.Time) bool {
	if p := s.pacers[shard]; p == nil || p.tokens < 0 || now.Sub(s.lentAt) < lendEvery {
		return false
	}
	s.lentAt = now
	return true
}

// lendEvery is the least time between two entries lend lets go.
const lendEvery = time.Second

// strangerWindow is how many entries that no paced shard gates the next call may carry while
// some shard is paced. It starts at strangerProbe, doubles after each call whose strangers were
// all stored, and goes back to strangerProbe when one is refused, as TCP's slow start grows its
// window: a shard that has not refused yet may be one of the healthy ones beside a hot shard,
// whose entries must flow, or the next of a stream that is overloaded everywhere, which a whole
// backlog sent at once would only meet with refusals. (Sent freely, they made most of what a
// simulated thousand environments at 10× overload had refused, in the calls that gave a shard its
// pacer and the second after: each environment learns its shards one refusal at a time.
// BENCHMARKS.md, "Strangers".)
func (s *shardPacers) strangerWindow() int { return max(s.strangers, strangerProbe) }

// strangerProbe is the least strangerWindow.
const strangerProbe = 2

// answerStrangers sizes the window from what the last call's strangers met.
func (s *shardPacers) answerStrangers(stored, refused int) {
	switch {
	case refused > 0:
		s.strangers = strangerProbe
	case stored > 0:
		s.strangers = min(2*s.strangerWindow(), maxRecordsPerCall)
	}
}

// paced reports whether any shard's pacer limits its rate.
func (s *shardPacers) paced() bool {
	for _, p := range s.pacers {
		if p.paced {
			return true
		}
	}
	return false
}

// shardCall is what one call did to one shard.
type shardCall struct {
	sent, accepted, throttled int

	// Refusals for throughput, by where they stand (learn): scattered ones have a stored entry of
	// the shard at least as large after them in the call, the tail's have none.
	scattered, tail int
	strangersTail   int // strangers (strangerWindow) in the tail
	randomTail      int // the tail, when notRate took it as random
}

// Refusals whatever the rate, told from a shard's throughput limit.
//
// A shard out of throughput refuses from the first of a call's entries over its limit to the
// last: a call is taken in an instant and its entries in order, and the shard's budget of records
// and bytes only grows with time. (So do both models here, and so did Kinesis in the one answer
// with throttled entries we have seen published, github.com/crccheck/kinesis-streams' wiki
// "putRecords failures": three entries stored, then four refused, of one shard.) A refusal
// scattered among stored entries, with one at least as large stored after it, is not the shard's
// rate: it is refused whatever the rate. Each shard keeps the share of its entries refused so
// (randomShare); a call's tail of refusals is then the rate only when a run that long is unlikely
// at that share (under refusalRunChance), else it is more of the same. A shard that never
// scatters its refusals has a share of 0, and every refusal of it is the rate, as before.
type randomShare struct {
	entries, refused float64 // aged by refusalMemory per call that measures them (age)
}

const (
	refusalMemory     = 0.9   // per call: about the last 10 calls' entries
	refusalRunChance  = 0.001 // a tail of refusals less likely than this at random is the rate
	maxRandomRunShare = 0.99  // a share above this is taken as this: the tail limit stays finite
)

// age ages the share by one call.
func (r *randomShare) age() {
	r.entries *= refusalMemory
	r.refused *= refusalMemory
}

// runLimit is the longest tail of refusals taken as random at this share.
func (r *randomShare) runLimit() int {
	if r == nil || r.refused == 0 {
		return 0
	}
	q := min(r.refused/r.entries, maxRandomRunShare)
	return int(math.Log(refusalRunChance) / math.Log(q))
}

// learn records one call's answers: results[i] answers recs[i], and strangers holds the keys the
// call carried in the stranger window (strangerWindow), which their answers size. It returns
// what each shard named did, with refusals whatever the rate left out, what the entries of
// unknown shard did, and how many entries were refused whatever the rate: KMS throttling
// (refusedWhateverRate), and refusals told from a shard's limit (randomShare).
func (s *shardPacers) learn(recs []pendingRecord, results []putResult, strangers map[string]bool) (byShard map[string]*shardCall, unknown shardCall, anyway int) {
	byShard = map[string]*shardCall{}
	shards := s.shardScratch[:0]
	var strangersStored, strangersRefused, shardRefused int
	for i, res := range results {
		shards = append(shards, "")
		if refusedWhateverRate(res.ErrorCode) {
			anyway++
			continue // not the stream's answer to this rate: no pacer learns from it
		}
		key := recs[i].key
		if strangers[key] && res.ErrorCode == "" {
			strangersStored++
		}
		var shard string
		ok := len(res.ShardID) > 0
		if ok {
			shard = s.internBytes(res.ShardID)
		} else if isThrottleCode(res.ErrorCode) {
			shard, ok = refusedShard(res.ErrorMessage)
		}
		c := &unknown
		if ok {
			shard = s.intern(shard)
			shards[i] = shard
			if recs[i].hashKey == "" { // a detour's shard says nothing of its key's
				s.shards.learn(hashOf(key), shard)
			}
			if c = byShard[shard]; c == nil {
				c = &shardCall{}
				byShard[shard] = c
			}
		}
		c.sent++
		switch {
		case res.ErrorCode == "":
			c.accepted++
		case isRetryableCode(res.ErrorCode, 0):
			c.throttled++
			if isThrottleCode(res.ErrorCode) {
				if ok {
					shardRefused++
				} else if strangers[key] {
					strangersRefused++ // of no shard named: taken for the rate
				}
			}
		}
	}
	s.shardScratch = shards
	// From the last entry back: the largest entry of each shard stored after this one.
	largestAfter := s.largestScratch
	clear(largestAfter)
	for i := len(results) - 1; i >= 0 && shardRefused > 0; i-- {
		shard, res := shards[i], results[i]
		if shard == "" {
			continue
		}
		size := recs[i].size + len(recs[i].key) // Kinesis counts the key too
		c := byShard[shard]
		switch {
		case res.ErrorCode == "":
			largestAfter[shard] = max(largestAfter[shard], size)
		case !isThrottleCode(res.ErrorCode):
		case size <= largestAfter[shard]:
			c.scattered++
		default:
			c.tail++
			if strangers[recs[i].key] {
				c.strangersTail++
			}
		}
	}
	// Measure every shard, then judge each tail: map order must not decide the outcome. So the
	// shares this call shows are made before any shard is measured: a share made partway
	// through would leave out the entries of the shards the map gave first.
	if share := s.random[streamShare]; share != nil {
		share.age()
	}
	for shard, c := range byShard {
		if c.scattered > 0 {
			s.share(shard)
		}
	}
	for shard, c := range byShard {
		s.measure(shard, c.accepted+c.scattered, c.scattered, c.scattered > 0)
	}
	for shard, c := range byShard {
		if c.throttled == 0 {
			continue
		}
		anyway += c.notRate(s.runLimit(shard))
		strangersRefused += c.strangersTail
		if c.throttled > 0 && s.pacers[shard] == nil {
			if len(s.pacers) >= maxShardPacers {
				s.forgetCalm()
			}
			s.pacers[shard] = s.newPace()
		}
	}
	for shard, c := range byShard {
		if c.randomTail > 0 {
			s.measure(shard, c.randomTail, c.randomTail, false) // more of the share
		}
	}
	if len(strangers) > 0 {
		s.answerStrangers(strangersStored, strangersRefused)
	}
	return byShard, unknown, anyway
}

// streamShare is the key of the share measured over all shards (randomShare).
const streamShare = ""

// measure adds to shard's share refused whatever the rate, and to the stream's, that of entries
// refused were so. The call's own measure (call set) first ages the shard's share by a call
// (refusalMemory; learn ages the stream's once per call), and makes the shares when refused
// entries are scattered among stored ones, forgiving the pacers they may have made.
func (s *shardPacers) measure(shard string, entries, refused int, call bool) {
	if call && refused > 0 {
		s.share(shard)
	}
	for _, key := range [...]string{shard, streamShare} {
		share := s.random[key]
		if share == nil {
			continue
		}
		if call && key == shard {
			share.age()
		}
		share.entries += float64(entries)
		share.refused += float64(refused)
	}
}

// share makes shard's share refused whatever the rate, and the stream's, where they are not yet
// made, forgiving the pacers they may have made (forgive).
func (s *shardPacers) share(shard string) {
	if (s.random[shard] == nil || s.random[streamShare] == nil) && len(s.random) >= 4*maxShardPacers {
		clear(s.random)
	}
	for _, key := range [...]string{shard, streamShare} {
		if s.random[key] == nil {
			s.random[key] = &randomShare{}
			s.forgive(key)
		}
	}
}

// forgive forgets the pacers that refusals whatever the rate may have made, once they first show
// (key is a shard, or streamShare for every shard without a share of its own): before, a tail
// of them was taken for the rate. Once per share, so a shard that also has a limit gets its
// pacer back from its next tail too long to be random, and keeps it.
func (s *shardPacers) forgive(key string) {
	for shard := range s.pacers {
		if shard == key || key == streamShare && s.random[shard] == nil {
			delete(s.pacers, shard)
		}
	}
}

// runLimit is the longest tail of refusals taken as random for shard: by its own share, or the
// stream's while it has none (a shard whose calls carry an entry or two cannot show scattered
// refusals).
func (s *shardPacers) runLimit(shard string) int {
	if share := s.random[shard]; share != nil {
		return share.runLimit()
	}
	return s.random[streamShare].runLimit()
}

// notRate takes the refusals that are not the shard's rate out of what its pacer learns, as if not
// sent: the scattered ones, and the tail when it is no longer than runLimit. It returns how many.
func (c *shardCall) notRate(runLimit int) int {
	n := c.scattered
	if c.tail <= runLimit {
		n += c.tail
		c.randomTail, c.tail, c.strangersTail = c.tail, 0, 0
	}
	c.sent -= n
	c.throttled -= n
	return n
}

// A crowd: the shards shared by so many environments that their pacers must grow more slowly.
//
// With N environments writing to a full shard of C records/s, each raising its rate by g a
// second and cutting c of it per refusal, each environment's cuts undo its growth when the shard
// refuses it about g / c of its rate a second: the shard refuses N·g / c entries a second, a
// share N·g / (c·C) of what it takes, whatever the overload. An environment that sends a shard
// tens of entries a second meets one cut per epoch however many of its entries are refused, and
// the share stays small; at an entry or two a second each refusal is a cut, and with g a tenth of
// the rate and c 30%, a thousand environments on a shard have about a third of what they send
// refused. (Simulated, a thousand environments at 10× overload: 29% of the entries sent to
// shards whose pacers were over 5 s old were refused; BENCHMARKS.md, "Crowds".)
//
// An environment cannot count its peers, but what it offers bounds them in a fleet of one
// function, whose environments offer alike: a shard that is full while it offers d entries a
// second is shared by C / d such environments at least. The shards are full where the stream
// stores less than crowdStored of what the function offers (a share refused at random whatever
// the rate, seen in calls too small to show it, leaves most of it stored in the end). Where that
// bound is many (d under crowdDemand), the shard pacers grow half as fast, with half the least
// step, and cut by 40% instead of 30% (crowdIncrease, crowdCut): N·g / (c·C) falls to 0.375 of
// what it was, on the shards that keep refusing (pacer.inCrowd). The environments then take
// longer to even their shares out, and fairness pays where they live for seconds (BENCHMARKS.md,
// "Crowds"). Where refusals whatever the rate have shown (randomShare), a tail of refusals may be
// more of them, which a deeper cut would cut for: no crowd while the stream's share allows a tail
// of one. What the function offers is counted in events, which aggregated formats pack many to a
// record: those seldom count as a crowd, and keep the rules of fleets of tens.
const crowdDemand = 15 // events/s per shard learnt: C / d is then at least 66 at 1,000 records/s

// judgeCrowd tells every shard pacer whether its shards are crowded, from the events the
// function has offered to ship (received, filters' drops left out) and the stream has stored
// (delivered), in all, the shards learnt so far, and the stream's share refused whatever the
// rate.
func (s *shardPacers) judgeCrowd(now time.Time, received, delivered uint64) {
	s.offered.update(now, received, delivered)
	if len(s.pacers) == 0 {
		return
	}
	crowded := s.offered.rate > 0 && s.offered.rate/float64(max(1, s.shards.runs())) < crowdDemand &&
		s.offered.stored < crowdStored && s.random[streamShare].runLimit() == 0
	for _, p := range s.pacers {
		p.crowded = crowded
	}
}

// crowdStored is the share of what the function offers that the stream stores, under which the
// shards are taken for full (A crowd, above).
const crowdStored = 0.75

// offeredRate is the events a second the function offers, and the share of them the stream
// stores: over offeredWindow, each window averaged with the estimate before it; in the first
// window, since the environment started, over the time since the first judgement (a second at
// least), so that a cold environment is judged from its first answer on.
type offeredRate struct {
	at                  time.Time // the start of the window
	received, delivered uint64    // at the start of the window
	rate, stored        float64
	windowed            bool // a window has ended
}

const offeredWindow = 2 * time.Second

func (o *offeredRate) update(now time.Time, received, delivered uint64) {
	if o.at.IsZero() {
		o.at = now
	}
	dt := now.Sub(o.at)
	if dt < offeredWindow && o.windowed {
		return
	}
	offered := float64(received) - float64(o.received) // toShip may step back while an event is filtered
	rate := max(0, offered) / max(1, dt.Seconds())
	stored := min(1, max(0, float64(delivered)-float64(o.delivered))/max(1, offered))
	if !o.windowed {
		o.rate, o.stored = rate, stored
	}
	if dt >= offeredWindow {
		o.rate, o.stored = (o.rate+rate)/2, (o.stored+stored)/2
		o.at, o.received, o.delivered, o.windowed = now, received, delivered, true
	}
}

// copyRoutes returns the ExplicitHashKeys (decimal; "" routes by the key) of n copies of the
// shutdown's last counts record at its try-th try (shipCounts). The first is its detour: by its
// key on the first try, then round its shard, to the try-th of the shards learnt that are not
// paced, while there is one: a hot shard refuses it whatever its tries, and its loss would hide
// the shutdown's count; when every shard is paced the stream is short everywhere, and a detour
// would only move the refusal. Each of the others goes to another shard learnt, those not paced
// first, from the try-th on, and by its key when none is known: a shard's refusals for its rate
// come together, so copies on one shard would be refused together.
func (s *shardPacers) copyRoutes(key string, try, n int) []string {
	calm, paced := s.others(key)
	detour := ""
	if try >= 1 && len(calm) > 0 {
		detour = decimalHash(calm[(try-1)%len(calm)])
	}
	routes := []string{detour}
	points := append(calm, paced...)
	for j := 1; j < n; j++ {
		route := ""
		if len(points) > 0 {
			route = decimalHash(points[(try+j-1)%len(points)])
		}
		routes = append(routes, route)
	}
	return routes
}

// others returns a point of each shard learnt but key's own: of those not paced, and of the paced.
func (s *shardPacers) others(key string) (calm, paced []hashKey) {
	own, _ := s.shards.shardOf(hashOf(key))
	seen := map[string]bool{own: true}
	for _, p := range s.shards.points {
		if seen[p.shard] {
			continue
		}
		seen[p.shard] = true
		if q := s.pacers[p.shard]; q == nil || !q.paced {
			calm = append(calm, p.hash)
		} else {
			paced = append(paced, p.hash)
		}
	}
	return calm, paced
}

// decimalHash is h as an ExplicitHashKey: a decimal integer.
func decimalHash(h hashKey) string { return new(big.Int).SetBytes(h[:]).String() }

// forgetCalm drops the pacers that no longer pace.
func (s *shardPacers) forgetCalm() {
	for shard, p := range s.pacers {
		if !p.paced {
			delete(s.pacers, shard)
		}
	}
}

// internBytes is intern for a shard id still in an answer's bytes; a known id costs no copy.
func (s *shardPacers) internBytes(shard []byte) string {
	if v, ok := s.names[string(shard)]; ok {
		return v
	}
	return s.intern(string(shard))
}

func (s *shardPacers) intern(shard string) string {
	if v, ok := s.names[shard]; ok {
		return v
	}
	if len(s.names) >= 4*maxShardPacers {
		clear(s.names)
	}
	s.names[shard] = shard
	return shard
}

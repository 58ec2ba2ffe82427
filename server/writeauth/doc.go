// Package writeauth authorizes appends to entity main streams.
//
// The in-memory token store (package tokens) answers first: a hit costs no
// query. A token the store does not hold (this process restarted since it
// was minted, or another instance minted it) is checked only when it
// carries the store's signature, so a forged token costs no query either;
// then the claim it names is read by primary key, and when that claim is
// active, for this stream, with this token's secret, the token is adopted
// into the store. From there it is an ordinary held token: a claim's end
// drops it (notification, reconcile timer) within the same bound as any
// other.
//
// It never decides a claim's lifecycle and never writes.
package writeauth

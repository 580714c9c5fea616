package queue

// keys holds every Redis key of one topic. It is the only place that builds
// key names, so the layout below is the whole truth:
//
//	<topic>                          LIST  ready messages: producers RPUSH, consumers pop the head
//	{<topic>}:processing:<consumer>  LIST  messages one reliable consumer holds (fetched, not acked)
//	{<topic>}:delayed                ZSET  retries and delayed messages, scored by due time (unix ms)
//	{<topic>}:dead                   LIST  dead-letter records, oldest first
//	{<topic>}:consumers              ZSET  reliable consumers, scored by last heartbeat (unix ms)
//	{<topic>}:concurrency            HASH  reliable consumer -> its handler concurrency
//
// The topic itself is the ready list, so any Redis client can produce to
// (RPUSH) or consume from (LPOP) it. Every auxiliary key carries the topic as
// its hash tag, and Redis Cluster hashes a key "orders" and a key
// "{orders}:dead" to the same slot, which is what makes the multi-key
// scripts legal on a cluster.
//
// Caveat: a topic that itself contains braces, such as "a{b}c", has its own
// hash tag ("b"), which differs from the tag of its auxiliary keys
// ("a{b"). Such topics work on a single Redis server but fail with CROSSSLOT
// on Redis Cluster.
type keys struct {
	ready     string
	delayed   string
	dead      string
	consumers string
	// concurrency records each reliable consumer's handler concurrency:
	// how many values of its processing list it may have been running
	// when it died, which the reaper counts as deliveries.
	concurrency string
	processing  string // prefix; append the consumer name
}

func newKeys(topic string) keys {
	tag := "{" + topic + "}:"
	return keys{
		ready:       topic,
		delayed:     tag + "delayed",
		dead:        tag + "dead",
		consumers:   tag + "consumers",
		concurrency: tag + "concurrency",
		processing:  tag + "processing:",
	}
}

// processingOf returns the processing list of consumer.
func (k keys) processingOf(consumer string) string { return k.processing + consumer }

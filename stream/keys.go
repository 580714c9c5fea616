package stream

import (
	"fmt"
	"strings"

	"github.com/redisbroker/broker"
)

// Keys. The topic is the stream key itself, so any client can XADD to it or
// read it with its own consumer group (DESIGN.md section 4). The only
// auxiliary key, the dead-letter stream, hashes to the topic's Cluster slot,
// which keeps the dead-letter script (XADD plus XACK) legal on Redis Cluster:
//
//   - a topic without a hash tag, "orders", gets "{orders}:dead": the whole
//     topic is the tag, and a key hashes like its tag;
//   - a topic with a hash tag of its own, "tenant{7}orders", gets
//     "tenant{7}orders:dead": the same first tag, so the same slot (wrapping
//     it in braces would make "tenant{7" the tag, another slot);
//   - a topic with no hash tag that contains '}' ("a}b", "{}x") cannot have
//     such a key, since any brace pair around it would end at its own '}':
//     Subscribe and Inspector.DeadLetters reject it with
//     broker.ErrInvalidOption.

// hashTag returns the part of key that Redis Cluster hashes: the content of
// the first "{...}" when it is not empty, and whether there is one.
func hashTag(key string) (string, bool) {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return "", false
	}
	end := strings.IndexByte(key[open+1:], '}')
	if end <= 0 {
		return "", false
	}
	return key[open+1 : open+1+end], true
}

// checkTopic rejects topics for which no dead-letter key can share the
// topic's slot.
func checkTopic(topic string) error {
	if topic == "" {
		return fmt.Errorf("%w: empty topic", broker.ErrInvalidOption)
	}
	if _, ok := hashTag(topic); !ok && strings.Contains(topic, "}") {
		return fmt.Errorf("%w: topic %q has a '}' but no hash tag, so no dead-letter key can share its Cluster slot", broker.ErrInvalidOption, topic)
	}
	return nil
}

// deadKey returns the dead-letter stream of topic, which checkTopic accepted.
func deadKey(topic string) string {
	if _, ok := hashTag(topic); ok {
		return topic + ":dead"
	}
	return "{" + topic + "}:dead"
}

// Dead-letter fields, written beside the message's own fields. They are not
// "meta." fields, so DecodeFields returns them as metadata under these names.
const (
	// DeadReason is the metadata key of a dead letter's reason: the handler's
	// error text, or why recovery gave up on the entry.
	DeadReason = "dead.reason"
	// DeadAttempts is the metadata key of the number of deliveries the entry
	// had when it was dead-lettered.
	DeadAttempts = "dead.attempts"
	// DeadEntryID is the metadata key of the entry's ID in the topic stream.
	DeadEntryID = "dead.entry_id"
	// DeadGroup is the metadata key of the consumer group that gave up.
	DeadGroup = "dead.group"
	// DeadConsumer is the metadata key of the consumer that gave up.
	DeadConsumer = "dead.consumer"
)

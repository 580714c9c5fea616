package pubsub_test

import "github.com/redis/go-redis/v9"

type pubsubClient = redis.UniversalClient

"""The AWS backend: the engine's ports on DynamoDB, EventBridge, Scheduler and the services."""

"""The training container of the ``ml-training-task`` ECS task definition."""

"""The serverless topology on one machine: emulators, push subscriptions, the functions."""

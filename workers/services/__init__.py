"""The reference services: users, core, notifications, and the scheduler's jobs.

Together they reproduce the scenario Baton exists for: a user's command at the
edge, a request from one service to another on that user's behalf, an event
that reaches a third service, and scheduled work for the same user that never
had an HTTP request.
"""

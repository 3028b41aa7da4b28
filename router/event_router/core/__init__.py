"""The event's path: validate -> route -> spool -> deliver, with retries and statistics. Imports api/ only."""

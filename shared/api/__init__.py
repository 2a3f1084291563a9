"""The HTTP API for backend services in any language (`chordline web`).

FastAPI on uvicorn: ``app`` builds the application and its routes, ``auth`` turns a bearer
key into its tenant and counts its requests, ``problems`` answers every error as
``application/problem+json``, ``limits`` bounds request bodies, ``sse`` streams a reply as
server-sent events, ``models`` are the request and response bodies the OpenAPI schema is
built from, and ``pages`` are the turn and conversation pages for people. The service holds
no turn's state: it calls the Python client's functions, which read and write Postgres and
read the reply streams in Redis.
"""

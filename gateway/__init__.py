"""The HTTP/JSON edge: a generic google.api.http transcoder."""

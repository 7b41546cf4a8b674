"""nmt-serve: translation as a local web service, and a page that shows the model at work.

`batcher` searches the sentences of concurrent requests together; `app` is the JSON API and
the page (`page.html`, one file with its script and style, nothing fetched from the network).
"""

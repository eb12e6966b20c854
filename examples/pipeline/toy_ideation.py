#!/usr/bin/env python3
"""A toy ideation command, run by `scientist work --mode ideation|hybrid` (see ../pipeline.toml).

It reads the request from $SCIENTIST_REQUEST_FILE (the ideation request as stored: its
`hypothesisId` and whatever its creator added, such as `hypothesis` and `numIdeas`) and writes
a JSON array of ideas to $SCIENTIST_IDEAS_FILE. A real one would ask a model. A request with
`"fail": true` fails, for trying out failure reports.
"""
import json
import os
import sys

with open(os.environ["SCIENTIST_REQUEST_FILE"]) as file:
    request = json.load(file)

if request.get("fail"):
    print("toy ideation: the model is unavailable (asked to fail)", file=sys.stderr)
    sys.exit(3)

hypothesis = request.get("hypothesis", "an untitled hypothesis")
count = int(request.get("numIdeas", 2))
ideas = [
    {
        "Name": f"idea_{index + 1}",
        "Title": f"Testing {hypothesis!r}, variant {index + 1}",
        "Experiment": f"Train the toy model with setting {index + 1} and compare against the baseline.",
    }
    for index in range(count)
]
print(f"toy ideation: {count} idea(s) for hypothesis {os.environ['SCIENTIST_HYPOTHESIS_ID']}")
with open(os.environ["SCIENTIST_IDEAS_FILE"], "w") as file:
    json.dump(ideas, file, indent=2)

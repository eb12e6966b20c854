#!/usr/bin/env python3
"""AI-Scientist-v2's launch_scientist_bfts.py, part by part, under `scientist work` (see
pipeline.toml): the run's idea (idea.json in the run directory) goes through the tree search
(Stage_1..Stage_4), plot aggregation (plots), the write-up (paper) and the LLM review
(validation), each reported as a stage, with the tree search reported from inside it
(bfts_reporting.py). Everything is written under the run directory, where the worker uploads
plots, PDFs and checkpoints as they appear.

A part that finished leaves a marker in .scientist/ (hidden: never uploaded), so that a retry
of the run (the same run directory) goes on from the first unfinished part.

Settings (pipeline.toml's [env]): AI_SCIENTIST_ROOT (a checkout of SakanaAI/AI-Scientist-v2,
with its requirements installed), BFTS_CONFIG (default: its bfts_config.yaml), WRITEUP_TYPE
(icbinb or normal), MODEL_AGG_PLOTS, MODEL_WRITEUP, MODEL_CITATION, MODEL_REVIEW,
NUM_CITE_ROUNDS, WRITEUP_RETRIES, SKIP_WRITEUP, SKIP_REVIEW, IDEA_INDEX (when idea.json is a
list of ideas), ARTIFACTS_PREFIX (the --artifacts prefix, for the paper's key).
"""

import json
import os
import os.path as osp
import shutil
import sys
import traceback

HERE = osp.dirname(osp.abspath(__file__))
try:
    from scientist_report import report
except ImportError:  # run from the scientist repository: the helper is in examples/python
    sys.path.insert(0, osp.join(HERE, "..", "python"))
    from scientist_report import report

ROOT = osp.abspath(os.environ.get("AI_SCIENTIST_ROOT", "AI-Scientist-v2"))
if not osp.isdir(osp.join(ROOT, "ai_scientist")):
    sys.exit("AI_SCIENTIST_ROOT=%s is not a checkout of SakanaAI/AI-Scientist-v2 (no ai_scientist/ in it): "
             "set it in pipeline.toml's [env]" % ROOT)
sys.path.insert(0, ROOT)
os.environ["AI_SCIENTIST_ROOT"] = ROOT

import bfts_reporting  # noqa: E402
import launch_scientist_bfts as launch  # noqa: E402  (its parts; its __main__ does not run)
from ai_scientist.llm import create_client  # noqa: E402
from ai_scientist.perform_icbinb_writeup import gather_citations  # noqa: E402
from ai_scientist.perform_icbinb_writeup import perform_writeup as perform_icbinb_writeup  # noqa: E402
from ai_scientist.perform_llm_review import load_paper, perform_review  # noqa: E402
from ai_scientist.perform_plotting import aggregate_plots  # noqa: E402
from ai_scientist.perform_vlm_review import perform_imgs_cap_ref_review  # noqa: E402
from ai_scientist.perform_writeup import perform_writeup  # noqa: E402
from ai_scientist.treesearch.bfts_utils import edit_bfts_config_file, idea_to_markdown  # noqa: E402
from ai_scientist.treesearch.perform_experiments_bfts_with_agentmanager import perform_experiments_bfts  # noqa: E402

# At import, not in main(): worker processes started with `spawn` import this module again
# and must report their LLM calls as well.
TREE = bfts_reporting.install(report)

RUN_DIR = os.environ.get("SCIENTIST_RUN_DIR", os.getcwd())
IDEA_DIR = osp.join(RUN_DIR, "ai_scientist")
MARKERS = osp.join(RUN_DIR, ".scientist")


def setting(name, default):
    return os.environ.get(name) or default


def done(part):
    return osp.exists(osp.join(MARKERS, part + ".done"))


def mark_done(part):
    os.makedirs(MARKERS, exist_ok=True)
    with open(osp.join(MARKERS, part + ".done"), "w") as marker:
        marker.write("done\n")


def load_idea():
    with open(osp.join(RUN_DIR, "idea.json")) as file:
        idea = json.load(file)
    if isinstance(idea, list):
        idea = idea[int(setting("IDEA_INDEX", "0"))]
    missing = [key for key in ("Name", "Title", "Short Hypothesis", "Experiments") if key not in idea]
    if missing:
        raise SystemExit("the run's idea lacks %s: enqueue an AI-Scientist idea (see examples/idea.json)"
                         % ", ".join(missing))
    return idea


def experiments(idea):
    """Stage_1..Stage_4: the tree search, as launch_scientist_bfts.py runs it."""
    os.makedirs(IDEA_DIR, exist_ok=True)
    idea_json = osp.join(IDEA_DIR, "idea.json")
    with open(idea_json, "w") as file:
        json.dump(idea, file, indent=4)
    idea_to_markdown(idea, osp.join(IDEA_DIR, "idea.md"), None)
    config = edit_bfts_config_file(setting("BFTS_CONFIG", osp.join(ROOT, "bfts_config.yaml")), IDEA_DIR, idea_json)
    perform_experiments_bfts(config)
    TREE.finish()
    results = osp.join(IDEA_DIR, "logs/0-run/experiment_results")
    if osp.exists(results):
        shutil.copytree(results, osp.join(IDEA_DIR, "experiment_results"), dirs_exist_ok=True)
    launch.save_token_tracker(IDEA_DIR)


def plots():
    with report.stage("plots", desc="aggregate the experiments' plots"):
        aggregate_plots(base_folder=IDEA_DIR, model=setting("MODEL_AGG_PLOTS", "o3-mini-2025-01-31"))
        shutil.rmtree(osp.join(IDEA_DIR, "experiment_results"), ignore_errors=True)


def paper():
    with report.stage("paper", desc="write the paper"):
        report.paper_started()
        model = setting("MODEL_WRITEUP", "o1-preview-2024-09-12")
        citations = gather_citations(IDEA_DIR, num_cite_rounds=int(setting("NUM_CITE_ROUNDS", "20")),
                                     small_model=setting("MODEL_CITATION", "gpt-4o-2024-11-20"))
        written = False
        for attempt in range(int(setting("WRITEUP_RETRIES", "3"))):
            print("Writeup attempt %d" % (attempt + 1), flush=True)
            if setting("WRITEUP_TYPE", "icbinb") == "normal":
                written = perform_writeup(base_folder=IDEA_DIR, big_model=model, page_limit=8, citations_text=citations)
            else:
                written = perform_icbinb_writeup(base_folder=IDEA_DIR, big_model=model, page_limit=4,
                                                 citations_text=citations)
            if written:
                break
        launch.save_token_tracker(IDEA_DIR)
        pdf = launch.find_pdf_path_for_review(IDEA_DIR)
        if not written or not pdf:
            report.failed("WRITEUP_FAILED", "no paper after %s attempts" % setting("WRITEUP_RETRIES", "3"),
                          stage="paper")
            sys.exit(1)
        relative = osp.relpath(pdf, RUN_DIR)
        report.artifact(pdf)
        report.paper_generated(report.artifact_key(relative, setting("ARTIFACTS_PREFIX", "")))


def validation():
    with report.stage("validation", desc="review the paper"):
        model = setting("MODEL_REVIEW", "gpt-4o-2024-11-20")
        report.validation_started(model)
        pdf = launch.find_pdf_path_for_review(IDEA_DIR)
        client, client_model = create_client(model)
        review = perform_review(load_paper(pdf), client_model, client)
        captions = perform_imgs_cap_ref_review(client, client_model, pdf)
        with open(osp.join(IDEA_DIR, "review_text.txt"), "w") as file:
            file.write(json.dumps(review, indent=4))
        with open(osp.join(IDEA_DIR, "review_img_cap_ref.json"), "w") as file:
            json.dump(captions, file, indent=4)
        launch.save_token_tracker(IDEA_DIR)
        scores = {key: review[key] for key in ("Overall", "Soundness", "Presentation", "Contribution",
                                               "Originality", "Quality", "Clarity", "Significance")
                  if isinstance(review, dict) and key in review}
        verdict = review.get("Decision") if isinstance(review, dict) else None
        report.validation_completed(verdict=verdict, scores=scores, review=review)


def main():
    idea = load_idea()
    if not done("experiments"):
        experiments(idea)
        if TREE.good_nodes == 0:
            report.failed("ALL_NODES_BUGGY", "the tree search found no working implementation",
                          stage=TREE.last_stage or "Stage_1")
            sys.exit(1)
        mark_done("experiments")
    if not done("plots"):
        plots()
        mark_done("plots")
    if setting("SKIP_WRITEUP", "") == "1":
        return
    if not done("paper"):
        paper()
        mark_done("paper")
    if setting("SKIP_REVIEW", "") != "1" and not done("validation"):
        validation()
        mark_done("validation")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        # The worker reports the failure (EXIT_1, with this traceback's tail) when we exit.
        traceback.print_exc()
        sys.exit(1)

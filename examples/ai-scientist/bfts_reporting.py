"""Reports AI-Scientist-v2's tree search to `scientist work` from inside it: each stage's start
and end, `stage_progress` after every step, every node, the best node's metrics, and the
tokens of every LLM call (`ai.llm.usage`).

`install(report)` hooks three places of `ai_scientist` (written against SakanaAI/AI-Scientist-v2
at a2a6cf4, where `AgentManager.run(exec_callback, step_callback)` calls
`_create_agent_for_stage(stage)` for each (sub-)stage and `step_callback(stage, journal)` after
each step, and `token_tracker.add_tokens` counts each call's usage), without editing its files:

    import bfts_reporting
    from scientist_report import report
    tree = bfts_reporting.install(report)
    perform_experiments_bfts(config_path)   # as launch_scientist_bfts.py does
    tree.finish()

Nothing here raises into the search: a reporting problem is one line on stderr.
"""

import math
import os
import re
import sys
import time

__all__ = ["TreeSearchReporter", "install", "scientist_stage"]

# The run document keeps the node summary for people: the start of the agent's analysis.
SUMMARY_CHARS = 500

_STAGE_NUMBER = re.compile(r"^(\d+)_")


def scientist_stage(name):
    """`1_initial_implementation_1_preliminary` (AgentManager's main stage 1, sub-stage 1) is
    scientist's `Stage_1`; None for a name that is not one of the four main stages."""
    match = _STAGE_NUMBER.match(name or "")
    number = int(match.group(1)) if match else 0
    return "Stage_%d" % number if 1 <= number <= 4 else None


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def metric_points(metric):
    """The (series name, value) pairs of a node's MetricValue: one for a plain number, one per
    metric and dataset for AI-Scientist-v2's {"metric_names": [...]} form."""
    if metric is None:
        return []
    value = getattr(metric, "value", metric)
    if _number(value) is not None:
        return [(getattr(metric, "name", None) or "metric", _number(value))]
    points = []
    if isinstance(value, dict):
        for entry in value.get("metric_names") or []:
            name = entry.get("metric_name") or "metric"
            for data in entry.get("data") or []:
                number = _number(data.get("final_value", data.get("best_value")))
                if number is not None:
                    dataset = data.get("dataset_name")
                    points.append(("%s/%s" % (name, dataset) if dataset else name, number))
    return points


def metric_json(metric):
    """A node's metric as the run document keeps it (any JSON)."""
    if metric is None:
        return None
    value = getattr(metric, "value", metric)
    if _number(value) is None and not isinstance(value, (dict, list, str)):
        value = None if value is None else str(value)
    fields = {"value": value, "name": getattr(metric, "name", None), "maximize": getattr(metric, "maximize", None)}
    return {name: field for name, field in fields.items() if field is not None}


def _warn(message):
    try:
        sys.stderr.write("bfts_reporting: %s\n" % message)
    except Exception:
        pass


class TreeSearchReporter:
    """Turns AgentManager's stages and journals into events. `enter_stage` and `step` are
    what the hooks call; a test calls them with journals of its own."""

    def __init__(self, report, clock=time.monotonic):
        self.report = report
        self.clock = clock
        self.stage = None
        self.stage_started_at = None
        # The stage reported last, and how many nodes that worked it has seen (for
        # ALL_NODES_BUGGY).
        self.last_stage = None
        self.good_nodes = 0
        self.substage = None
        self.substage_started_at = None
        # node id -> what was last reported of it (so a node changed later is sent again).
        self.reported_nodes = {}
        self.best_node = {}
        self.best_points = {}

    def enter_stage(self, bfts_stage):
        """A (sub-)stage begins: a new main stage ends the previous one."""
        try:
            self._enter(bfts_stage)
        except Exception as err:
            _warn("cannot report the start of %r: %r" % (getattr(bfts_stage, "name", bfts_stage), err))

    def step(self, bfts_stage, journal):
        """`step_callback(stage, journal)`: after every step of the search."""
        try:
            self._step(bfts_stage, journal)
        except Exception as err:
            _warn("cannot report a step of %r: %r" % (getattr(bfts_stage, "name", bfts_stage), err))

    def finish(self):
        """The search ended: its last stage is complete."""
        if self.stage is not None:
            self.report.stage_completed(self.stage, round(self.clock() - self.stage_started_at, 3))
            self.stage = None

    def _enter(self, bfts_stage):
        stage = scientist_stage(bfts_stage.name)
        if stage is None:
            return
        now = self.clock()
        if stage != self.stage:
            self.finish()
            self.report.stage_started(stage, desc=getattr(bfts_stage, "description", None) or bfts_stage.name)
            self.stage, self.stage_started_at, self.last_stage = stage, now, stage
        if bfts_stage.name != self.substage:
            self.substage, self.substage_started_at = bfts_stage.name, now
        # The stage's process pool is made next: its workers' LLM calls carry this stage.
        os.environ["SCIENTIST_STAGE"] = stage
        self.report.current_stage = stage

    def _step(self, bfts_stage, journal):
        self._enter(bfts_stage)
        stage = self.stage
        nodes = list(journal.nodes)
        for node in nodes:
            self._report_node(node, stage)
        best = _best_node(journal)
        if best is not None and self.best_node.get(bfts_stage.name) != best.id:
            self.best_node[bfts_stage.name] = best.id
            self.report.node(best.id, "selected_best", stage=stage)
        if best is not None:
            points = metric_points(best.metric)
            if points != self.best_points.get(bfts_stage.name):
                self.best_points[bfts_stage.name] = points
                for name, value in points:
                    self.report.metric(name, value, step=len(nodes), stage=stage, node_id=best.id)
        steps, max_iterations = len(nodes), getattr(bfts_stage, "max_iterations", None) or None
        eta_s = None
        if steps and max_iterations and self.substage_started_at is not None:
            per_step = (self.clock() - self.substage_started_at) / steps
            eta_s = round(per_step * max(0, max_iterations - steps), 1)
        good_nodes = len(journal.good_nodes)
        self.good_nodes = max(self.good_nodes, good_nodes)
        self.report.progress(stage, steps, max_iterations, good_nodes=good_nodes,
                             buggy_nodes=len(journal.buggy_nodes), total_nodes=steps,
                             best_metric=None if best is None else str(best.metric), eta_s=eta_s,
                             substage=bfts_stage.name)

    def _report_node(self, node, stage):
        metric = metric_json(getattr(node, "metric", None))
        is_buggy = getattr(node, "is_buggy", None)
        seen = (is_buggy, getattr(node, "is_buggy_plots", None), repr(metric))
        if self.reported_nodes.get(node.id) == seen:
            return
        first = node.id not in self.reported_nodes
        self.reported_nodes[node.id] = seen
        parent = getattr(node, "parent", None)
        parent_id = getattr(parent, "id", parent)
        if first:
            self.report.node(node.id, "created", stage=stage, parent_id=parent_id)
        analysis = getattr(node, "analysis", None)
        self.report.node(node.id, "completed", stage=stage, parent_id=parent_id,
                         is_buggy=None if is_buggy is None else bool(is_buggy), metric=metric,
                         summary=analysis[:SUMMARY_CHARS] if isinstance(analysis, str) else None,
                         exec_time_s=_number(getattr(node, "exec_time", None)),
                         exc_type=getattr(node, "exc_type", None))


def _best_node(journal):
    # Without use_val_metric_only, get_best_node asks an LLM to choose (a paid call per step).
    try:
        return journal.get_best_node(use_val_metric_only=True)
    except TypeError:
        return journal.get_best_node()


def report_token_usage(tracker, report):
    """Wraps `tracker.add_tokens` (AI-Scientist's TokenTracker) so that every call it counts is
    also an `ai.llm.usage` event, in whatever process makes the call."""
    if getattr(tracker.add_tokens, "reports_to_scientist", False):
        return
    counted = tracker.add_tokens

    def add_tokens(model, prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens):
        counted(model, prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens)
        try:
            report.llm_usage(model, int(prompt_tokens or 0), int(completion_tokens or 0),
                             cached_tokens=int(cached_tokens or 0),
                             reasoning_tokens=int(reasoning_tokens or 0))
        except Exception as err:
            _warn("cannot report the usage of %s: %r" % (model, err))

    add_tokens.reports_to_scientist = True
    tracker.add_tokens = add_tokens


def install(report, agent_manager_class=None, tracker=None):
    """Hooks AgentManager and the token tracker (imported from `ai_scientist` unless given);
    returns the TreeSearchReporter, whose `finish()` ends the last stage. Call it at import
    time of the pipeline's main module, so that processes started with `spawn` (which import
    that module again) report their LLM calls too."""
    if agent_manager_class is None:
        from ai_scientist.treesearch.agent_manager import AgentManager as agent_manager_class
    if tracker is None:
        from ai_scientist.utils.token_tracker import token_tracker as tracker
    report_token_usage(tracker, report)
    tree = TreeSearchReporter(report)
    run, create_agent = agent_manager_class.run, agent_manager_class._create_agent_for_stage
    if getattr(run, "reports_to_scientist", False):
        return run.reports_to_scientist

    def run_reported(self, exec_callback, step_callback=None):
        def step_reported(stage, journal):
            tree.step(stage, journal)
            if step_callback is not None:
                step_callback(stage, journal)

        return run(self, exec_callback, step_reported)

    def create_agent_reported(self, stage):
        tree.enter_stage(stage)
        return create_agent(self, stage)

    run_reported.reports_to_scientist = tree
    agent_manager_class.run = run_reported
    agent_manager_class._create_agent_for_stage = create_agent_reported
    return tree

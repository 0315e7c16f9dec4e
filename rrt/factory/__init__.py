"""The factory: config -> objects, for every entry point (train, eval, serve, convert).

- ``models``: the ``model`` group (``ModelChoice``): its architecture, the starting model (pretrained weights, a
  seeded random init, a saved rrt model or run dir), the reduced-size baseline's config, the saved teacher's dir;
- ``plan``: one training run resolved once into a frozen ``RunPlan`` (recursion spec, budget, variant, start model,
  teacher, KD and early-exit settings) that the preflight, the driver and the record's ``setting`` read;
- ``student``: the student and the frozen teacher of a plan, and who teaches (for the record);
- ``targets``: the model, tokenizer and record that eval and serve score (``run=``, ``checkpoint=`` or ``model=``).
"""
